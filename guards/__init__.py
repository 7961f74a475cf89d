"""Deterministic guards around the support agent: policy, approvals, DLP, injection screen, budgets.

A model only proposes; everything here decides, with no model and no I/O beyond the
policy file and the token-budget table. Import the submodules themselves (this package
re-exports nothing, so importing one guard never loads the others):

- :mod:`guards.pack`: the policy pack (TOML data) and its schema.
- :mod:`guards.policy`: the engine that decides each proposed action under the pack.
- :mod:`guards.approvals`: who may decide a paused plan and which edits are allowed.
- :mod:`guards.dlp`: redaction of personal data and secrets in logs, traces and audit rows.
- :mod:`guards.injection`: prompt-injection screening of ticket and retrieved text.
- :mod:`guards.budgets`: per-run caps and the daily quotas of tenants and users.
"""
