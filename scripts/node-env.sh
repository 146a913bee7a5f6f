# Sourced (from the checkout's root) by setup.sh, demo.sh and test.sh: when the machine's Node.js is
# missing or older than imgcache needs, the project's own (.node/bin, put there by
# scripts/node-from-npm.sh) goes first on PATH, for npm, the build, the demo and bin/run.js alike.
node_ok() {
  command -v node >/dev/null &&
    node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 10) ? 0 : 1)' 2>/dev/null
}
if ! node_ok && [[ -x .node/bin/node ]]; then
  export PATH="$PWD/.node/bin:$PATH"
fi
