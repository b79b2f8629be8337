#!/bin/sh
# A coordinator agent: it starts three helpers of its own, below its own id,
# through the socket corral gave it ($CORRAL_SOCKET: `corral` uses it inside
# an agent), reports how far the team is, and waits for the helpers.
#
#   corral spawn lead -- sh examples/coordinator/lead.sh
#
# Helper 3 is a runaway: it allocates memory until something stops it (a team
# budget: `corral team set lead --memory 200`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
me=$CORRAL_AGENT_ID
corral spawn "$me.helper1" --cwd "$here" -- python3 helper.py
corral spawn "$me.helper2" --cwd "$here" -- python3 helper.py
corral spawn "$me.helper3" --cwd "$here" -- python3 runaway.py
# Only its own team: `corral ps` here lists lead and lead.*, nothing else.
corral ps
while :; do
    done_=$(corral --json ps | python3 -c 'import json,sys; print(sum(1 for s in json.load(sys.stdin).values() if s["state"] == "ended"))')
    corral progress $((done_ * 33)) --message "$done_ of 3 helpers ended"
    sleep 1
done
