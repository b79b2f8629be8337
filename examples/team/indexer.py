"""An example agent: works through CHUNKS chunks and reports its progress to
corral over the daemon's socket (CORRAL_SOCKET, CORRAL_AGENT_ID are set for
every agent), with the standard library only."""

import http.client
import json
import os
import socket
import time


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("corral")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def report(percent: int, message: str) -> None:
    conn = UnixHTTPConnection(os.environ["CORRAL_SOCKET"])
    body = json.dumps({"progress": percent, "message": message})
    conn.request("PUT", f"/v1/agents/{os.environ['CORRAL_AGENT_ID']}/progress", body)
    conn.getresponse().read()


chunks = int(os.environ.get("CHUNKS", "30"))
print("indexing", chunks, "chunks", flush=True)
for i in range(1, chunks + 1):
    time.sleep(1)
    report(100 * i // chunks, f"chunk {i} of {chunks}")
print("done", flush=True)
# Stay up (a real indexer would serve or watch for more work).
while True:
    time.sleep(3600)
