"""Each support node declares the part of the run context it may use, and that part is
SupportContext's: a node typed ``Runtime[TriageDeps]`` runs on the real context unchanged,
and its unit test runs it on a fake holding only those fields (``support.node_fakes``)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from langgraph.runtime import Runtime

from graphs.context import (FinishDeps, PolicyCheckDeps, ProposeDeps, RetrieveDeps, SupportContext, TriageDeps,
                            VerifyDeps, protocol_fields)
from nodes.finish import complete, escalate_to_human
from nodes.policy_check import policy_check
from nodes.propose import propose_action
from nodes.retrieve import retrieve_context
from nodes.triage import triage
from nodes.verify import verify

NODES = {triage: TriageDeps, retrieve_context: RetrieveDeps, propose_action: ProposeDeps, policy_check: PolicyCheckDeps,
         complete: FinishDeps, escalate_to_human: FinishDeps, verify: VerifyDeps}


@pytest.mark.parametrize("node", NODES, ids=lambda f: f.__name__)
def test_each_node_declares_its_narrow_dependencies(node):
    hint = typing.get_type_hints(node)["runtime"]
    assert typing.get_origin(hint) is Runtime and typing.get_args(hint) == (NODES[node],)
    assert protocol_fields(NODES[node]) < {f.name for f in dataclasses.fields(SupportContext)}  # strictly less


@pytest.mark.parametrize("deps", sorted({*NODES.values(), VerifyDeps}, key=lambda p: p.__name__), ids=lambda p: p.__name__)
def test_every_protocol_field_is_a_support_context_field_of_the_same_type(deps):
    fields = typing.get_type_hints(SupportContext)
    for name in protocol_fields(deps):
        prop = next(vars(k)[name] for k in deps.__mro__ if name in vars(k))
        assert typing.get_type_hints(prop.fget)["return"] == fields[name], (deps.__name__, name)


def test_no_node_but_approval_sees_the_reviewer_directory_and_only_signers_see_the_key():
    assert not any("role_of" in protocol_fields(p) for p in NODES.values())
    assert {n.__name__ for n, p in NODES.items() if "signing_key" in protocol_fields(p)} == {"propose_action"}
