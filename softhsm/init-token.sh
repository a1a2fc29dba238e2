#!/usr/bin/env bash
# Creates (once) a SoftHSM token for SealGate under DIR, with PINs generated into files of mode 0600.
#   softhsm/init-token.sh DIR [LABEL]
# Leaves DIR/softhsm2.conf, DIR/tokens/, DIR/user-pin, DIR/so-pin. Running it again reuses them.
set -euo pipefail
dir=$(realpath -m "${1:?usage: init-token.sh DIR [LABEL]}")
label=${2:-sealgate}
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
sed "s|@TOKEN_DIR@|$dir/tokens|" "$here/softhsm2.conf.in" > "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"

umask 077
for pin in user-pin so-pin; do
  [ -s "$dir/$pin" ] || od -An -N12 -tx1 /dev/urandom | tr -d ' \n' > "$dir/$pin"
done

if softhsm2-util --show-slots 2>/dev/null | grep -Eq "Label:[[:space:]]*$label[[:space:]]*$"; then
  exit 0
fi
softhsm2-util --init-token --free --label "$label" \
  --so-pin "$(cat "$dir/so-pin")" --pin "$(cat "$dir/user-pin")" >/dev/null
