"""A well-behaved helper: works through 600 steps of ~0.1 s, reporting progress."""
import os
import subprocess
import time

STEPS = int(os.environ.get("STEPS", "600"))
for step in range(1, STEPS + 1):
    time.sleep(0.1)
    if step % 20 == 0:
        pct = step * 100 // STEPS
        subprocess.run(["corral", "progress", str(pct), "--message", f"step {step} of {STEPS}"], check=False)
print("done", flush=True)
