#!/usr/bin/env bash
# The Docker environment of tests/e2e/test_compose.py: the user's offline route,
# scripts/offline-images.sh (make images-offline), with the test's own image tag
# (TUNECLUSTER_E2E_IMAGE, default tunecluster:e2e) and no .env written:
#   tests/e2e/docker_env.sh up | prepare | down | requirements | mirror
exec bash "$(cd "$(dirname "$0")/../.." && pwd)/scripts/offline-images.sh" "$@"
