"""The web dashboard in a real browser (headless Chromium, Selenium), against
a real daemon with real agents: what the page shows is checked against what
the daemon and /proc hold."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from conftest import Browsers, Daemon, process_gone, shot, size, wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

PY = sys.executable or "python3"
# An agent that works a little (about 20 % of a CPU, 20 MiB) until stopped.
BUSY = [
    "python3",
    "-c",
    "import time\nb = bytearray(20 << 20)\nwhile True:\n"
    "    t = time.time()\n    while time.time() - t < 0.02: pass\n    time.sleep(0.08)\n",
]
IDLE = ["sleep", "600"]


def row(driver: WebDriver, agent_id: str) -> Any:
    rows = driver.find_elements(By.CSS_SELECTOR, f'[data-agent-id="{agent_id}"]')
    return rows[0] if rows else None


def badge(driver: WebDriver, agent_id: str) -> str:
    r = row(driver, agent_id)
    return r.find_element(By.CSS_SELECTOR, ".badge").text if r else ""


def open_page(driver: WebDriver, url: str) -> None:
    driver.get(url)
    wait_for(
        "the page to load its agents", lambda: driver.execute_script("return window.corral && window.corral.ready")
    )


def act(driver: WebDriver, agent_id: str, action: str) -> None:
    """Clicks the agent's row, the action in its detail pane, and the confirmation."""
    row(driver, agent_id).click()
    wait_for("the detail pane", lambda: driver.find_element(By.ID, "d-title").text == agent_id)
    driver.find_element(By.CSS_SELECTOR, f'#detail-actions [data-action="{action}"]').click()
    confirm = wait_for(
        "the confirmation",
        lambda: [b for b in driver.find_elements(By.CSS_SELECTOR, '[data-action="confirm"]') if b.is_displayed()],
    )
    confirm[0].click()


def test_the_page_lists_live_agents_and_shows_a_state_change_without_reload(daemon: Daemon, browsers: Browsers) -> None:
    daemon.spawn("team.a.1", IDLE)
    daemon.spawn("team.a.2", IDLE)
    daemon.spawn("solo", IDLE)
    driver = browsers.new()
    open_page(driver, daemon.login_url())
    for agent_id in ("team.a.1", "team.a.2", "solo"):
        wait_for(f"{agent_id}'s row as running", lambda a=agent_id: badge(driver, a) == "running")
    # The team row counts its members by state.
    team = driver.find_element(By.CSS_SELECTOR, '[data-team="team.a"]')
    assert "2 running" in team.text, team.text
    # A mark that a reload would wipe.
    driver.execute_script("window.notReloaded = 42")
    status, _ = daemon.call("POST", "/v1/pause", {"agent_id": "team.a.1"})
    assert status == 200
    wait_for("the pause to show", lambda: badge(driver, "team.a.1") == "paused")
    status, body = daemon.call("PUT", "/v1/agents/solo/progress", {"progress": 40, "message": "halfway there"})
    assert status == 200, body
    wait_for("the progress to show", lambda: "halfway there" in row(driver, "solo").text)
    assert driver.execute_script("return window.notReloaded") == 42, "the page was reloaded"
    assert "1 running" in driver.find_element(By.CSS_SELECTOR, '[data-team="team.a"]').text
    # The kernel agrees: the paused agent is stopped (frozen or SIGSTOPped).
    pid, _ = daemon.agents["team.a.1"]
    wait_for("team.a.1 to be frozen in /proc", lambda: frozen(pid))


def frozen(pid: int) -> bool:
    """The process is stopped (state T), or its cgroup v2 leaf is frozen."""
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    if stat[0] == "T":
        return True
    lines = open(f"/proc/{pid}/cgroup").read().splitlines()
    path = next((line[3:] for line in lines if line.startswith("0::")), "/")
    if path == "/":
        return False
    for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        try:
            if "frozen 1" in open(f"{mount}{path}/cgroup.events").read():
                return True
        except OSError:
            continue
    return False


def test_a_stop_from_the_page_ends_the_agent(daemon: Daemon, browsers: Browsers) -> None:
    daemon.spawn("victim", IDLE)
    daemon.spawn("bystander", IDLE)
    driver = browsers.new()
    open_page(driver, daemon.login_url())
    wait_for("the row", lambda: badge(driver, "victim") == "running")
    act(driver, "victim", "stop")
    pid, ticks = daemon.agents["victim"]
    wait_for("the agent's process to be gone from /proc", lambda: process_gone(pid, ticks))
    wait_for("the row to say it ended", lambda: badge(driver, "victim") in ("cancelled", "completed", "failed"))
    end = row(driver, "victim").find_element(By.CSS_SELECTOR, ".end").get_attribute("textContent")
    assert end, "the end reason is shown"
    # Only that one.
    bpid, bticks = daemon.agents["bystander"]
    assert not process_gone(bpid, bticks)
    status, body = daemon.call("GET", "/v1/agents/victim")
    assert status == 200 and body["state"] == "ended", body


def test_the_plot_has_points_and_screenshots_at_both_sizes(daemon: Daemon, browsers: Browsers) -> None:
    daemon.spawn("lab.worker.1", BUSY)
    daemon.spawn("lab.worker.2", BUSY)
    daemon.spawn("lab.idle", IDLE)
    daemon.spawn("ops.watch", IDLE)
    daemon.call("PUT", "/v1/agents/lab.worker.1/progress", {"progress": 65, "message": "epoch 13/20"})
    daemon.call("PUT", "/v1/agents/lab.worker.2/progress", {"progress": 20, "message": "loading shards"})
    daemon.spawn("ops.once", ["true"])
    driver = browsers.new()
    open_page(driver, daemon.login_url())
    wait_for("the rows", lambda: badge(driver, "lab.worker.1") == "running")
    row(driver, "lab.worker.1").click()
    # A few seconds of points (the page asks for new ones every 3 s).
    pts = wait_for(
        "the CPU plot to have points",
        lambda: int(driver.find_element(By.ID, "plot-cpu").get_attribute("data-points")) >= 6,
        timeout=30,
    )
    assert pts
    assert int(driver.find_element(By.ID, "plot-mem").get_attribute("data-points")) >= 3
    # The points are the daemon's history of that agent.
    status, hist = daemon.call("GET", "/v1/agents/lab.worker.1/history")
    assert status == 200 and len(hist["points"]) >= 3, hist
    assert any(p["memory_mb"] >= 15 for p in hist["points"]), hist
    wait_for("the status table", lambda: "persistent_status" in driver.find_element(By.ID, "d-status").text)
    wait_for("the runs table", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#d-runs tr")) >= 2)
    wait_for("the daemon's figures", lambda: "%" in driver.find_element(By.ID, "daemon").text)
    assert "RSS" in driver.find_element(By.ID, "daemon").text
    shot(driver, "dashboard-1280x800.png")
    # A team's plot sums its members.
    driver.find_element(By.CSS_SELECTOR, '[data-team="lab"]').click()
    wait_for("the team's plot", lambda: "sum of" in driver.find_element(By.ID, "cap-cpu").text)
    # A phone.
    size(driver, 390, 844)
    assert driver.execute_script("return window.innerWidth") == 390
    driver.find_element(By.ID, "d-close").click()
    wait_for("the list", lambda: row(driver, "lab.worker.1").is_displayed())
    overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone"
    shot(driver, "dashboard-390x844.png")
    row(driver, "lab.worker.1").click()
    wait_for("the detail pane over the list", lambda: driver.find_element(By.ID, "detail-pane").is_displayed())
    wait_for("the phone's plot", lambda: int(driver.find_element(By.ID, "plot-cpu").get_attribute("data-points")) >= 3)
    shot(driver, "dashboard-390x844-detail.png")


def test_the_login_is_good_once_and_a_cookie_alone_cannot_change_anything(daemon: Daemon, browsers: Browsers) -> None:
    daemon.spawn("keep", IDLE)
    url = daemon.login_url()
    first = browsers.new()
    open_page(first, url)
    wait_for("the row", lambda: badge(first, "keep") == "running")
    # Another browser session with the same URL: refused, and not logged in.
    second = browsers.new()
    second.get(url)
    assert "used already or has expired" in second.find_element(By.TAG_NAME, "body").text
    second.get(url.split("/ui/login")[0] + "/ui/")
    wait_for("the login banner", lambda: second.find_element(By.ID, "login").is_displayed())
    assert not second.find_elements(By.CSS_SELECTOR, "[data-agent-id]")
    # In the logged-in browser: a change without the page's header is refused, with it served.
    fetch = """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: "POST", headers: arguments[1], body: JSON.stringify({agent_id: "keep"}),
            credentials: "same-origin"}).then(r => done(r.status), e => done(String(e)));
    """
    assert first.execute_async_script(fetch, "/v1/pause", {"Content-Type": "application/json"}) == 403
    pid, ticks = daemon.agents["keep"]
    assert not frozen(pid), "a refused pause froze the agent"
    assert (
        first.execute_async_script(fetch, "/v1/pause", {"Content-Type": "application/json", "X-Corral-UI": "1"}) == 200
    )
    wait_for("the pause to show", lambda: badge(first, "keep") == "paused")


def test_a_thousand_agents_stay_within_the_budget(daemon: Daemon, browsers: Browsers) -> None:
    n = 1000
    t0 = time.monotonic()
    for start in range(0, n, 250):
        daemon.spawn_batch(
            [
                {"agent_id": f"fleet.g{i // 100}.w{i}", "command": IDLE, "verify_ms": 0}
                for i in range(start, start + 250)
            ]
        )
    t_spawn = time.monotonic() - t0
    driver = browsers.new()
    open_page(driver, daemon.login_url())
    wait_for(
        "1000 rows",
        lambda: len(driver.find_elements(By.CSS_SELECTOR, "[data-agent-id]")) == n,
        timeout=60,
    )
    t_page = time.monotonic() - t0 - t_spawn
    driver.execute_script(
        "const p = window.corral.perf; p.batches = 0; p.maxMs = 0; p.totalMs = 0; p.recent = []; p.events = 0;"
    )

    # Progress for every third agent from two clients at once: events
    # through the stream, some to a batch.
    def report(part: int) -> None:
        conn = daemon.connection()
        try:
            for i in range(part * 3, n, 6):
                path = f"/v1/agents/fleet.g{i // 100}.w{i}/progress"
                status, body = daemon.call("PUT", path, {"progress": 90, "message": "nearly"}, conn)
                assert status == 200, body
        finally:
            conn.close()

    reports = len(range(0, n, 3))
    t1 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(report, range(2)))
    t_reports = time.monotonic() - t1
    wait_for(
        "every row to show its progress",
        lambda: (
            driver.execute_script(
                "return [...document.querySelectorAll('[data-agent-id] .msg')].filter(m => m.textContent.startsWith('90%')).length"
            )
            == reports
        ),
        timeout=60,
        every=0.5,
    )
    perf = driver.execute_script("return window.corral.perf")
    print(
        f"1000 agents: spawned in {t_spawn:.1f} s, listed by the page in {t_page:.1f} s, "
        f"{reports} progress reports in {t_reports:.1f} s; {perf['batches']} batches, {perf['events']} events, "
        f"max {perf['maxMs']:.1f} ms, mean {perf['totalMs'] / max(1, perf['batches']):.1f} ms per batch"
    )
    assert perf["events"] >= reports, perf
    assert perf["maxMs"] < 100, f"a batch took {perf['maxMs']:.1f} ms: {perf['recent']}"
    # A state change among them still shows at once.
    daemon.call("POST", "/v1/pause", {"agent_id": "fleet.g3.w345"})
    wait_for("the pause among 1000", lambda: badge(driver, "fleet.g3.w345") == "paused")
    assert driver.execute_script("return window.corral.perf.maxMs") < 100


def test_the_spawn_form_and_actions_on_a_selection(daemon: Daemon, browsers: Browsers) -> None:
    daemon.spawn("crew.1", IDLE)
    daemon.spawn("crew.2", IDLE)
    driver = browsers.new()
    open_page(driver, daemon.login_url())
    wait_for("the rows", lambda: badge(driver, "crew.2") == "running")
    # Spawn from the form.
    driver.find_element(By.ID, "spawn-open").click()
    form = driver.find_element(By.ID, "spawn-form")
    form.find_element(By.NAME, "agent_id").send_keys("crew.3")
    form.find_element(By.NAME, "command").send_keys("sleep 600")
    form.find_element(By.NAME, "labels").send_keys("made=by-form")
    form.find_element(By.CSS_SELECTOR, '[data-action="spawn"]').click()
    wait_for("the new agent's row", lambda: badge(driver, "crew.3") == "running")
    status, body = daemon.call("GET", "/v1/agents/crew.3")
    assert status == 200 and body["labels"] == {"made": "by-form"}, body
    daemon.remember("crew.3", body["pid"])
    assert open(f"/proc/{body['pid']}/cmdline").read().split("\0")[:2] == ["sleep", "600"]
    # Tick two, restart them: each gets a new run, a new process, the old one gone.
    old = {a: daemon.agents[a] for a in ("crew.1", "crew.3")}
    for a in old:
        row(driver, a).find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
    wait_for("the selection", lambda: driver.find_element(By.ID, "selection-count").text == "2 selected")
    driver.find_element(By.CSS_SELECTOR, '#bulk-actions [data-action="restart"]').click()
    wait_for("the confirmation", lambda: driver.find_element(By.CSS_SELECTOR, '[data-action="confirm"]').is_displayed())
    assert "2 agents" in driver.find_element(By.ID, "confirm-text").text
    driver.find_element(By.CSS_SELECTOR, '[data-action="confirm"]').click()
    for a, (pid, ticks) in old.items():
        wait_for(f"{a}'s first process gone", lambda p=pid, t=ticks: process_gone(p, t))
        new = wait_for(
            f"{a}'s second run",
            lambda a=a: (lambda s: s if s["run"] == 2 and s["pid"] else None)(daemon.call("GET", f"/v1/agents/{a}")[1]),
        )
        daemon.remember(a, new["pid"])
        wait_for(f"{a}'s row to count the restart", lambda a=a: "↻1" in row(driver, a).text)
    # The one not ticked is untouched.
    status, body = daemon.call("GET", "/v1/agents/crew.2")
    assert body["run"] == 1 and not process_gone(*daemon.agents["crew.2"])
