#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: target/debian/vnamed_<version>_<arch>.deb
# (the binary, systemd units, example configuration, man pages, completions,
# alerting rules and dashboard). Installs cargo-deb (crates.io) if missing.
#
#   bash scripts/package.sh           # from a release build
#   bash scripts/package.sh --debug   # from the debug build the tests use (faster)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --quiet --locked cargo-deb
profile=release
[ "${1:-}" = "--debug" ] && profile=dev
bin=target/$([ $profile = dev ] && echo debug || echo release)/vnamed
cargo build --quiet --profile $profile --bin vnamed

# What cargo-deb packs beside the binary, generated from it.
out=target/package
rm -rf "$out"
mkdir -p "$out"
"$bin" generate --man "$out/man" --completions "$out/completions"
gzip -9n "$out"/man/*.1
"$bin" init --zone example.com --pool www --backend 192.0.2.10:80 --backend 192.0.2.11:80 \
  --listen 127.0.0.1:53 --dir "$out/etc" --zones-dir "$out/zones" >/dev/null
# Installed, the zones live in the state directory.
sed -i "s|^zones_dir = .*|zones_dir = \"/var/lib/vnamed/zones\"|" "$out/etc/vnamed.toml"
for f in "$out/etc/vnamed.toml" "$out/etc/monitor.toml"; do
  { echo "# /etc/vnamed/$(basename "$f"): an example to edit (or write a new one with"
    echo "# \`vnamed init\`). \`man vnamed-authority\`, \`man vnamed-monitor\` and"
    echo "# /usr/share/doc/vnamed/README.md describe every key."
    cat "$f"; } > "$f.new"
  mv "$f.new" "$f"
done

if [ $profile = dev ]; then
  cargo deb --no-build --profile dev --no-separate-debug-symbols --quiet
else
  cargo deb --no-build --quiet
fi
ls target/debian/vnamed_*.deb
