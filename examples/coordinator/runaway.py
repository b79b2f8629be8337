"""A runaway helper: takes 20 MiB more every half second, and never lets go."""
import time

held = []
while True:
    held.append(b"\x01" * (20 << 20))  # written, so resident
    print(f"holding {len(held) * 20} MiB", flush=True)
    time.sleep(0.5)
