#!/bin/sh
# Container entrypoint: run the command as this process (so SIGTERM from `docker stop`
# reaches the node supervisor, which shuts down gracefully). No logic lives here.
set -e
exec "$@"
