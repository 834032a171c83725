#!/bin/sh
# Make sure the Debian packages that tests/deploy and tests/ui run are installed (`make test` calls this first):
#   nginx           the load balancer: tests/deploy/test_nginx_lb.py runs it with deploy/nginx's template
#   ShellCheck      lints scripts/*.sh (tests/deploy/test_scripts_lint.py)
#   chromium, chromium-driver  the headless browser (and its /usr/bin/chromedriver) the UI tests drive with
#                   Selenium (tests/ui, bench/browser.py) and `make screenshots` uses
#   docker-compose  only when no compose client exists (neither `docker compose` nor `docker-compose`):
#                   tests/deploy/test_compose.py parses docker-compose.yml with it (no Docker engine needed)
# Idempotent and quiet: does nothing when all are there. Installing needs root or password-less sudo.
# The nginx package's own service is not started: the test runs its own nginx with a private prefix.
set -eu

packages=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || packages="nginx"
command -v shellcheck >/dev/null 2>&1 || packages="$packages shellcheck"
[ -x /usr/bin/chromium ] || packages="$packages chromium"
[ -x /usr/bin/chromedriver ] || packages="$packages chromium-driver"
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  packages="$packages docker-compose"
fi
[ -z "$packages" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root="sudo -n"
else
  echo "ensure-deploy-tools.sh: missing$packages; installing needs root: sudo apt-get install -y$packages" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# A policy-rc.d that exits 101 keeps the package from starting its own nginx service while it installs;
# an existing one is left as it is.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  $as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  trap '$as_root rm -f /usr/sbin/policy-rc.d' EXIT
fi
$as_root apt-get update -qq >/dev/null
# shellcheck disable=SC2086 # word splitting of the package list is intended
$as_root apt-get install -y -qq --no-install-recommends $packages >/dev/null
