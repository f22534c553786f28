#!/usr/bin/env python3
"""The scripted demo agent: drives the guest's browser through Porthole's computer-use API.

It stands in for a real coding agent (no model API is reachable here) and behaves like one:
it opens the app under test, clicks and types through it, checks the result on a screenshot,
and, in an agent run, edits a file and commits. While a human holds control or the agent is
paused, its actions are refused (409): it waits and tries again.
Environment: PORTHOLE_AGENT_URL, PORTHOLE_TOKEN (set by Porthole); PORTHOLE_RUN_ID in runs.
"""
import base64, json, os, subprocess, sys, time, urllib.error, urllib.request

URL = os.environ.get("PORTHOLE_AGENT_URL", "http://127.0.0.1:7300").rstrip("/")
TOKEN = os.environ["PORTHOLE_TOKEN"]
APP = os.environ.get("DEMO_APP_URL", "http://127.0.0.1:8080/")
PACE = float(os.environ.get("DEMO_PACE", "0.8"))
RUN = os.environ.get("PORTHOLE_RUN_ID")


def call(path, body=None):
    req = urllib.request.Request(URL + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def act(action, **params):
    """One computer-use action; waits politely while a human holds control."""
    while True:
        try:
            out = call("/v1/computer", dict(action=action, **params))
            print(f"agent: {action} {json.dumps(params)}", flush=True)
            time.sleep(PACE)
            return out
        except urllib.error.HTTPError as e:
            msg = json.loads(e.read() or b"{}").get("error", {}).get("message", "")
            if e.code == 409:
                print(f"agent: waiting ({msg})", flush=True)
                time.sleep(2)
                continue
            raise SystemExit(f"agent: {action} failed: {e.code} {msg}")


def wait_for_app():
    for _ in range(100):
        try:
            urllib.request.urlopen(APP, timeout=2)
            return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"agent: {APP} never came up")


def open_browser():
    # Like a coding agent would: start the app in a browser from the shell.
    subprocess.Popen(["chromium", "--no-sandbox", "--test-type", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--kiosk",
                      "--user-data-dir=" + os.path.expanduser("~/.demo-chromium"), APP],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(3)


def todo_round(items):
    for text in items:
        act("left_click", coordinate=[400, 148])
        act("type", text=text)
        act("key", text="Return")
    act("left_click", coordinate=[108, 228])        # tick the first item
    shot = act("screenshot")
    png = base64.b64decode(shot["base64_image"] or "")
    print(f"agent: checked the page ({len(png)} byte screenshot)", flush=True)


def commit_work(task):
    ws = "/workspace"
    with open(os.path.join(ws, "NOTES.md"), "a") as f:
        f.write(f"- {task} (verified in the browser by the demo agent)\n")
    with open(os.path.join(ws, "tasks.json"), "w") as f:
        json.dump([{"id": "1", "content": task, "status": "done", "blockedBy": []},
                   {"id": "2", "content": "review", "status": "pending", "blockedBy": ["1"]}], f)
    time.sleep(1.5)  # look over the change before committing, as an agent would
    subprocess.run(["git", "-C", ws, "add", "NOTES.md"], check=True)
    subprocess.run(["git", "-C", ws, "commit", "-q", "-m", f"demo agent: {task}"], check=True)
    print("agent: committed NOTES.md", flush=True)


def main():
    task = " ".join(sys.argv[1:]) or "add todos and tick one"
    print(f"agent: task: {task}", flush=True)
    if os.environ.get("DEMO_IDLE"):
        print("agent: thinking...", flush=True)
        time.sleep(10**6)
    wait_for_app()
    open_browser()
    todo_round(["Write the release notes", "Verify the login page"])
    if RUN:
        commit_work(task)
        print("agent: done", flush=True)
        return
    n = 0
    while True:  # the demo keeps working so a newcomer can watch, take over and replay
        n += 1
        time.sleep(5)
        act("scroll", coordinate=[640, 400], scroll_direction="down", scroll_amount=2)
        todo_round([f"Round {n}: check the dashboard"])


if __name__ == "__main__":
    main()
