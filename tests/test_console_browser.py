"""The review console in real headless Chromium (Debian's chromium + chromedriver, Selenium).

keel's API with the console is served by uvicorn on a loopback port (embedded store, an
embedded worker); runs are started through the HTTP API as a requester would, and every
decision is taken by clicking (or typing) in the page. Proves: a run that needs approval
appears in the open queue without a reload, is approved in the page, and the thread view
then shows ``completed`` with the approver in the audit trail (the Approve→completed time is
printed); another tenant's approver sees nothing of it; the requester's own approval is
refused with a clear message; a reject without a reason is refused; an escalation is taken
over and resolved; approval works from the keyboard alone; the pages have no serious or
critical axe-core violations; when an approval's deadline passes the worker applies the pack's
default (reject or escalate, as ``system``), the queue drops it live and the thread page says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.api_helpers import serve_in_thread
from support.browser import axe_violations, chromium, wait_for
from support.console_env import ConsoleEnv, console_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[ConsoleEnv, str]]:
    with console_env(tmp_path_factory.mktemp("console-browser")) as env, serve_in_thread(env.app) as url:
        yield env, url


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def sign_in(driver: Any, url: str, key: str) -> None:
    """Sign in from the keyboard: type the key, press Enter."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.delete_all_cookies()
    driver.get(f"{url}/console/login")
    field = driver.find_element(By.ID, "api_key")
    field.send_keys(key)
    field.send_keys(Keys.ENTER)
    wait_for(lambda: driver.current_url.endswith("/console/approvals"), message="signed in")


def start(env: ConsoleEnv, url: str, ticket: str, tenant: str, as_: str = "requester") -> dict[str, Any]:
    r = httpx.post(f"{url}/tickets", json={"ticket": env.tickets(tenant)[ticket], "wait": True},
                   headers={"x-api-key": env.keys[tenant][as_]}, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def test_run_appears_live_is_approved_in_the_page_and_completes(served, browser):
    from selenium.webdriver.common.by import By

    env, url = served
    t = env.add_tenant()
    sign_in(browser, url, env.keys[t]["approver"])
    out = start(env, url, "T-8", t)  # after the queue page is open: it must appear without a reload
    tid = out["thread_id"]
    assert out["result"]["status"] == "awaiting_approval"
    marker = browser.execute_script("window.__same_page = 1; return window.__same_page")
    row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-thread="{tid}"]'), timeout=15,
                   message="the new approval appears in the open queue")
    assert browser.execute_script("return window.__same_page") == marker  # live refresh, no reload
    cells = row[0].text
    assert "T-8" in cells and "billing" in cells and "$89.99" in cells and f"requester-{t}" in cells
    row[0].find_element(By.CSS_SELECTOR, "a.open").click()
    wait_for(lambda: browser.find_elements(By.ID, "approve"), message="detail page")
    assert "refund.window" in browser.page_source and "refunded_cents" in browser.page_source

    button = browser.find_element(By.ID, "approve")
    t0 = time.perf_counter()
    button.click()
    wait_for(lambda: text(browser, "#run-status") == "completed", timeout=30, poll=0.01, message="completed shown")
    elapsed = time.perf_counter() - t0
    print(f"\nApprove click -> 'completed' shown in the page: {elapsed * 1000:.0f} ms")
    assert f"/console/threads/{tid}" in browser.current_url
    wait_for(lambda: any(a.text == f"approver-{t}" for a in browser.find_elements(By.CSS_SELECTOR, "#audit td.actor")),
             message="the approver in the audit trail")
    assert browser.find_elements(By.ID, "chain-ok")


def test_another_tenants_approver_sees_nothing(served, browser):
    from selenium.webdriver.common.by import By

    env, url = served
    t = env.add_tenant()
    tid = start(env, url, "T-8", t)["thread_id"]
    sign_in(browser, url, env.keys[env.tenants[1]]["approver"])
    time.sleep(0.3)
    assert tid not in browser.page_source and not browser.find_elements(By.CSS_SELECTOR, f'tr[data-thread="{tid}"]')
    for path in (f"/console/approvals/{tid}", f"/console/threads/{tid}"):
        browser.get(f"{url}{path}")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Not found"
        assert "T-8" not in browser.page_source and not browser.find_elements(By.ID, "approve")


def test_the_requesters_approval_is_refused_with_a_clear_message(served, browser):
    from selenium.webdriver.common.by import By

    env, url = served
    t = env.add_tenant()
    tid = start(env, url, "T-8", t, as_="dual-requester")["thread_id"]
    sign_in(browser, url, env.keys[t]["dual-approver"])
    browser.get(f"{url}/console/approvals/{tid}")
    assert "requester of a run cannot approve" in text(browser, "#cannot-decide")
    browser.find_element(By.ID, "approve").click()
    msg = wait_for(lambda: text(browser, "#decision-error"), message="refusal shown")
    assert "requester of a run cannot approve" in msg
    r = httpx.get(f"{url}/threads/{tid}", headers={"x-api-key": env.keys[t]["requester"]})
    assert r.json()["status"] == "interrupted"


def test_a_reject_without_a_reason_is_refused(served, browser):
    from selenium.webdriver.common.by import By

    env, url = served
    t = env.add_tenant()
    tid = start(env, url, "T-8", t)["thread_id"]
    sign_in(browser, url, env.keys[t]["approver"])
    browser.get(f"{url}/console/approvals/{tid}")
    browser.find_element(By.ID, "reject").click()
    assert "needs a reason" in wait_for(lambda: text(browser, "#decision-error"), message="refusal shown")
    assert httpx.get(f"{url}/threads/{tid}", headers={"x-api-key": env.keys[t]["requester"]}).json()["status"] == \
        "interrupted"
    browser.find_element(By.ID, "reject-reason").send_keys("the customer already has a replacement")
    browser.find_element(By.ID, "reject").click()
    wait_for(lambda: text(browser, "#run-status") == "rejected", timeout=30, message="rejected shown")


def test_an_escalation_is_taken_over_and_resolved(served, browser):
    from selenium.webdriver.common.by import By

    env, url = served
    t = env.add_tenant()
    out = start(env, url, "T-2", t)
    assert out["result"]["status"] == "escalated"
    tid = out["thread_id"]
    sign_in(browser, url, env.keys[t]["approver"])
    browser.get(f"{url}/console/escalations")
    card = browser.find_element(By.ID, f"esc-{tid}")
    assert "low_confidence" in card.text and "Open: nobody has taken it" in card.text
    card.find_element(By.CSS_SELECTOR, "button.take").click()
    card = wait_for(lambda: browser.find_element(By.ID, f"esc-{tid}")
                    if f"Taken over by approver-{t}" in browser.find_element(By.ID, f"esc-{tid}").text else None,
                    message="assignment shown")
    card.find_element(By.ID, f"resolution-{tid}").send_keys("refunded the customer by hand")
    card.find_element(By.CSS_SELECTOR, "button.close").click()
    wait_for(lambda: not browser.find_elements(By.ID, f"esc-{tid}"), message="closed escalation leaves the queue")
    browser.get(f"{url}/console/threads/{tid}")
    assert "refunded the customer by hand" in browser.page_source and "resolved" in browser.page_source


def test_keyboard_only_approval(served, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    env, url = served
    t = env.add_tenant()
    tid = start(env, url, "T-8", t)["thread_id"]
    sign_in(browser, url, env.keys[t]["approver"])  # typed, Enter
    browser.get(f"{url}/console/approvals/{tid}")
    for _ in range(300):  # Tab through the page to the Approve button
        if browser.execute_script("return document.activeElement && document.activeElement.id") == "approve":
            break
        ActionChains(browser).send_keys(Keys.TAB).perform()
    else:
        raise AssertionError("Approve is not reachable with Tab")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(lambda: text(browser, "#run-status") == "completed", timeout=30, message="completed after Enter")


def test_pages_pass_axe_core(served, browser):
    env, url = served
    t = env.add_tenant()
    tid = start(env, url, "T-8", t)["thread_id"]
    esc = start(env, url, "T-2", t)["thread_id"]
    browser.delete_all_cookies()
    browser.get(f"{url}/console/login")
    problems = {"login": axe_violations(browser)}
    sign_in(browser, url, env.keys[t]["approver"])
    for name, path in (("queue", "/console/approvals"), ("detail", f"/console/approvals/{tid}"),
                       ("escalations", "/console/escalations"), ("thread", f"/console/threads/{esc}")):
        browser.get(f"{url}{path}")
        problems[name] = axe_violations(browser)
    assert all(not v for v in problems.values()), problems


@pytest.mark.parametrize("on_deadline", ["reject", "escalate"])
def test_a_deadline_passes_and_the_packs_default_applies(tmp_path, browser, on_deadline):
    """A run waiting for approval shows its deadline in the queue; when the deadline passes the
    worker's sweep applies the pack's ``on_deadline`` (as ``system``, reason ``deadline_passed``),
    the open queue drops the item without a reload, and the thread page says what happened.

    The pack allows whole minutes only, so the deadline row is moved into the past (as
    tests/test_deadlines.py does) instead of waiting a minute; the real sweep does the rest."""
    from selenium.webdriver.common.by import By
    from support.review_helpers import write_pack

    pack = write_pack(tmp_path / "pack.toml", deadline_minutes=30, on_deadline=on_deadline)
    with console_env(tmp_path / "d", settings={"policy_file": pack, "review_sweep_s": 0.1}) as env, \
            serve_in_thread(env.app) as url:
        t = env.add_tenant()
        sign_in(browser, url, env.keys[t]["approver"])
        tid = start(env, url, "T-8", t)["thread_id"]
        row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-thread="{tid}"]'), timeout=15,
                       message="the approval appears in the open queue")
        (item,) = [i for i in httpx.get(f"{url}/approvals", headers={"x-api-key": env.keys[t]["approver"]}).json()["items"]
                   if i["thread_id"] == tid]
        shown = row[0].find_element(By.CSS_SELECTOR, "time")
        assert shown.get_attribute("datetime") == item["deadline"] and shown.text in ("in 29m", "in 30m"), shown.text
        assert (item["on_deadline"], item["assignee_group"]) == (on_deadline, "support-approvers")
        marker = browser.execute_script("window.__same_page = 7; return window.__same_page")

        past = time.time() - 1  # the deadline passes
        assert env.rt.db.execute("UPDATE approval_deadlines SET deadline_ts = ?, deadline = ? WHERE thread_id = ?",
                                 (past, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(past)), tid)) == 1
        wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, f'tr[data-thread="{tid}"]'), timeout=15,
                 message="the open queue drops the item once the default is applied")
        assert browser.execute_script("return window.__same_page") == marker  # live refresh, no reload

        browser.get(f"{url}/console/threads/{tid}")
        outcome = "rejected" if on_deadline == "reject" else "escalated"
        wait_for(lambda: text(browser, "#run-status") == outcome, timeout=30, message=f"{outcome} shown")
        wait_for(lambda: text(browser, "#decision-reason") == "deadline_passed", message="the reason shown")
        assert text(browser, "#decision-by") == "system" and on_deadline in text(browser, "#decision")
        actors = [(a.text, a.find_element(By.XPATH, "..").text) for a in
                  browser.find_elements(By.CSS_SELECTOR, "#audit td.actor")]
        assert any(actor == "system" and "deadline_passed" in line for actor, line in actors), actors
        assert browser.find_elements(By.ID, "chain-ok")
        assert env.rt.backoffice.get_order(t, "O-5002")["refunded_cents"] == 0  # nothing was refunded
        if on_deadline == "escalate":
            assert "deadline_passed" in text(browser, "#status")  # the reason code
            browser.get(f"{url}/console/escalations")
            card = browser.find_element(By.ID, f"esc-{tid}")
            assert "deadline_passed" in card.text and "Open: nobody has taken it" in card.text
