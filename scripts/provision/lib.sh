# Helpers shared by scripts/provision.sh and scripts/image.sh (sourced; set SAY_AS first).
# A component is present when its stamp file holds the version or input hash it was made from.
CACHE=${FLOWMILL_CACHE:-$HOME/.cache/flowmill}

say() { printf '[%s] %s\n' "$SAY_AS" "$*"; }
have_stamp() { [ -f "$CACHE/$1.stamp" ] && [ "$(cat "$CACHE/$1.stamp")" = "$2" ]; }
put_stamp() { mkdir -p "$(dirname "$CACHE/$1.stamp")" && printf '%s' "$2" > "$CACHE/$1.stamp"; }

APT_UPDATED=0
apt_install() {  # installs the named Debian packages that are missing; updates the index once
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ "${#missing[@]}" = 0 ]; then
    say "debian packages present: $*"
    return
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
