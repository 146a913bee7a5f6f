#!/usr/bin/env bash
# npm run package: imgcache for hosts without Node.js, built from the project's own bundle (dist/).
#   pkg/imgcache-VERSION-linux-ARCH/   the tree, as `oclif pack` lays one out: bin/imgcache (launcher),
#                                      bin/node (Node.js from the npm registry, scripts/node-from-npm.sh),
#                                      bin/run.js, dist/, node_modules/ (oclif's plugins), package.json,
#                                      oclif.manifest.json, completions/, systemd/
#   pkg/imgcache                       the standalone file: packaging/standalone-header.sh + that tree as
#                                      a gzip'ed tar (one file to copy onto a compute host or bastion)
#   pkg/imgcache_VERSION_ARCH.deb      the same tree as a Debian package (dpkg-deb; nothing downloaded)
# For this machine's architecture (x64 or arm64). IMGCACHE_PACKAGE_DIR changes pkg/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/node-env.sh
source scripts/node-env.sh

log() { printf 'package: %s\n' "$*" >&2; }

out=${IMGCACHE_PACKAGE_DIR:-$PWD/pkg}
version=$(node -p 'require("./package.json").version')
nodebin=$(scripts/node-from-npm.sh "$PWD/.node")
arch=$(basename "$(readlink "$nodebin/node" | sed 's|/bin/node$||')" | sed 's/.*-linux-//')
case $arch in x64) debarch=amd64 ;; arm64) debarch=arm64 ;; *) log "unknown architecture $arch"; exit 1 ;; esac
name=imgcache-$version-linux-$arch
tree=$out/$name

log "building the bundle"
npm run --silent build >&2

rm -rf "$tree" "$out/.deb"
mkdir -p "$tree/bin"
cp -r dist package.json package-lock.json oclif.manifest.json README.md "$tree/"
cp bin/run.js "$tree/bin/run.js"
cp packaging/launcher.sh "$tree/bin/imgcache"
cp -L "$nodebin/node" "$tree/bin/node"
chmod 755 "$tree/bin/imgcache" "$tree/bin/node"
# oclif loads its plugins (help, autocomplete) from node_modules: the lockfile's production packages,
# from npm's cache when it has them. Everything else the CLI uses is in the bundle already.
log "installing the production npm packages into the tree"
(cd "$tree" && npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error >&2)
rm "$tree/package-lock.json"

# Completion functions, as plugin-autocomplete writes them, run by the tree's own launcher.
ac=$(mktemp -d)
trap 'rm -rf "$ac"' EXIT
XDG_CACHE_HOME=$ac "$tree/bin/imgcache" autocomplete --refresh-cache >/dev/null
mkdir -p "$tree/completions/bash" "$tree/completions/zsh" "$tree/systemd"
cp "$ac/imgcache/autocomplete/functions/bash/imgcache.bash" "$tree/completions/bash/imgcache"
cp "$ac/imgcache/autocomplete/functions/zsh/_imgcache" "$tree/completions/zsh/_imgcache"
cp packaging/systemd/imgcache-prune.service packaging/systemd/imgcache-prune.timer "$tree/systemd/"
"$tree/bin/imgcache" --version >/dev/null

log "writing the standalone file"
payload=$out/.payload.tgz
tar -C "$tree" --owner=0 --group=0 --numeric-owner -cf - . | gzip -6 >"$payload"
sha=$(sha256sum "$payload" | cut -d' ' -f1)
header_lines=$(wc -l <packaging/standalone-header.sh)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SHA256@/$sha/" -e "s/@SKIP@/$((header_lines + 1))/" \
  packaging/standalone-header.sh >"$out/.imgcache.tmp"
cat "$payload" >>"$out/.imgcache.tmp"
chmod 755 "$out/.imgcache.tmp"
mv "$out/.imgcache.tmp" "$out/imgcache"
rm "$payload"

log "writing the Debian package"
deb=$out/.deb
mkdir -p "$deb/DEBIAN" "$deb/usr/lib" "$deb/usr/bin" "$deb/usr/share/doc/imgcache" \
  "$deb/usr/share/bash-completion/completions" "$deb/usr/share/zsh/vendor-completions" "$deb/lib/systemd/system"
cp -a "$tree" "$deb/usr/lib/imgcache"
rm -r "$deb/usr/lib/imgcache/completions" "$deb/usr/lib/imgcache/systemd" "$deb/usr/lib/imgcache/README.md"
ln -s ../lib/imgcache/bin/imgcache "$deb/usr/bin/imgcache"
cp "$tree/completions/bash/imgcache" "$deb/usr/share/bash-completion/completions/imgcache"
cp "$tree/completions/zsh/_imgcache" "$deb/usr/share/zsh/vendor-completions/_imgcache"
cp "$tree/systemd/"* "$deb/lib/systemd/system/"
gzip -9n <README.md >"$deb/usr/share/doc/imgcache/README.md.gz"
cp packaging/debian/copyright "$deb/usr/share/doc/imgcache/copyright"
printf 'imgcache (%s) unstable; urgency=medium\n\n  * Built from the imgcache source by npm run package.\n\n -- imgcache developers <imgcache@localhost>  %s\n' \
  "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" |
  gzip -9n >"$deb/usr/share/doc/imgcache/changelog.gz"
size=$(du -sk --exclude=DEBIAN "$deb" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$debarch/" -e "s/@SIZE@/$size/" packaging/debian/control >"$deb/DEBIAN/control"
find "$deb" -type d -exec chmod 755 {} +
dpkg-deb --root-owner-group -Zgzip --build "$deb" "$out/imgcache_${version}_$debarch.deb" >&2
rm -rf "$deb"

printf '%s\n' "$out/imgcache" "$out/imgcache_${version}_$debarch.deb"
