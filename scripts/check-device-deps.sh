#!/usr/bin/env bash
# The device program must not be able to pull in the server: check the
# dependency graph of `edgeml-agent` (normal dependencies, every feature, for
# each device target) for server-side crates. CI runs this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Server code, its database, its export formats and API description, and the operator CLI.
forbidden='^(edgeml-collector|edgeml|rusqlite|libsqlite3-sys|postgres|tokio-postgres|r2d2|refinery|refinery-core|arrow-[a-z-]+|parquet|utoipa|utoipa-axum) v'
status=0
for target in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  tree="$(cargo tree --locked -p edgeml-agent --all-features -e normal --prefix none --target "$target")"
  if bad="$(grep -E "$forbidden" <<<"$tree" | sort -u)" && [ -n "$bad" ]; then
    echo "edgeml-agent ($target) depends on server-side crates:" >&2
    echo "$bad" >&2
    status=1
  fi
done
[ $status = 0 ] && echo "edgeml-agent links no server code (checked: collector, SQLite, PostgreSQL, Arrow/Parquet, the edgeml CLI)"
exit $status
