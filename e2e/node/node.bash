# shellcheck shell=bash disable=SC2034,SC2154
# (variables of e2e/cluster, which sources this file, and of DIR/node.env)
#
# The e2e node, sourced by e2e/cluster: a network namespace of its own that
# holds the whole cluster (control plane and node alike), containerd with
# runc and the CNI bridge, kubelet and kube-proxy.
#
# Network: the namespace `e2e-<id>` has loopback, one veth to the host
# (`eth0`, the node's address, 198.18.0.(4i+2)/30; the host end is
# 198.18.0.(4i+1): a /30 of the benchmarking range that no address or route
# of the machine covers), and
# the bridge `cni0` of the pods (10.244.0.0/24). It has no default route:
# whatever a pod or the node sends to an address outside those ranges is
# unreachable. Services (10.96.0.0/16) are routed to the host end, so that
# kube-proxy's DNAT applies; the host blackholes the pod and Service ranges,
# so nothing addressed to them leaves the machine. The tests, on the host,
# reach the API server and the node's registries at the node's address.
#
# Capabilities: this machine withholds CAP_SYS_RESOURCE, so containerd
# clamps the OOM score adjustments kubelet asks for (no process here can
# lower its own).
#
# Cgroups: this machine mounts cgroup v1 hierarchies (and an empty unified
# one), so kubelet runs with `failCgroupV1: false` and the cgroupfs driver,
# as do containerd and runc; every pod cgroup lives under `/e2e-<id>` in
# each hierarchy, removed by `down`.

node_programs=(containerd kubelet kube-proxy)
# kubelet's own directory, where the manifests' hostPaths point (the CSI
# plugin's socket, plugin registration, pods' volumes): one node per
# machine at a time, marked by its owner file.
kubelet_root=/var/lib/kubelet
kubelet_owner="$kubelet_root/.e2e-cluster"
node_bin="$root/target/e2e/node"
# Containers see this as the sandbox image; it is built from e2e/node/pause.
pause_image="registry.k8s.io/pause:3.10"
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/16

# node_build: containerd, its shim and ctr, and pause, from e2e/node's
# go.mod, when sources changed.
node_build() {
  local marker="$node_bin/containerd"
  if [ -x "$node_bin/pause" ] && ! stale "$marker" "$root/e2e/node"; then
    return
  fi
  mkdir -p "$node_bin"
  echo "e2e/cluster: building containerd (a cold build takes minutes)" >&2
  if ! (cd "$root/e2e/node" &&
    CGO_ENABLED=0 go build -trimpath -tags no_btrfs,no_devmapper,no_zfs -o "$node_bin/" \
      github.com/containerd/containerd/v2/cmd/containerd \
      github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
      github.com/containerd/containerd/v2/cmd/ctr &&
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$node_bin/pause" ./pause) >"$dir/node-build.log" 2>&1; then
    cat "$dir/node-build.log" >&2
    die "building the node's programs failed (log: $dir/node-build.log)"
  fi
  touch "$marker"
}

# node_requirements: what the node needs of this machine, with the fix.
node_requirements() {
  [ "$(id -u)" = 0 ] || die "the node needs root (network namespaces, mounts, cgroups); or set E2E_NODE=0"
  local tool
  for tool in ip nsenter iptables runc buildah; do
    command -v "$tool" >/dev/null 2>&1 || die "the node needs $tool (bash .ci/install)"
  done
  [ -x /usr/lib/cni/bridge ] || die "the node needs the CNI plugins in /usr/lib/cni (bash .ci/install)"
  local other
  other="$(cat "$kubelet_owner" 2>/dev/null || true)"
  if pgrep -x kubelet >/dev/null; then
    die "a kubelet already runs on this machine and owns $kubelet_root"
  fi
  if [ -n "$other" ] && [ "$other" != "$dir" ] && [ -f "$other/pids/kubelet.pid" ] &&
    kill -0 "$(cat "$other/pids/kubelet.pid")" 2>/dev/null; then
    die "the e2e cluster in $other runs a node (one per machine): take it down first"
  fi
}

# node_id: a short name for DIR, for the namespace, veth and cgroups.
node_id() {
  printf '%s' "$dir" | sha256sum | cut -c1-8
}

# node_names: the namespace, host veth and cgroup of DIR.
node_names() {
  local id
  id="$(node_id)"
  netns="e2e-$id"
  veth="e2eh$id"
  cgroup="/e2e-$id"
}

# node_network_up: the namespace, its veth and routes; writes DIR/node.env.
node_network_up() {
  local ns veth i host_ip node_ip
  node_names
  ns="$netns"
  node_network_down
  # Marks DIR as a node's for down, from here on.
  mkdir -p "$dir/node"
  for ((i = 0; i < 64; i++)); do
    host_ip="198.18.0.$((4 * i + 1))"
    node_ip="198.18.0.$((4 * i + 2))"
    # Free: only the default route (or none) covers it.
    [ -z "$(ip -4 route show match "$node_ip" table all | grep -v '^default ' | grep -v '^broadcast ' || true)" ] && break
  done
  [ "$i" -lt 64 ] || die "no free /30 in 198.18.0.0/24 for the node's veth"
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip addr add "$host_ip/30" dev "$veth"
  ip link set "$veth" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$node_ip/30" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add "$service_cidr" via "$host_ip"
  ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  ip route replace blackhole 10.244.0.0/16
  ip route replace blackhole "$service_cidr"
  printf 'netns=%s\nhost_ip=%s\nnode_ip=%s\n' "$ns" "$host_ip" "$node_ip" >"$dir/node.env"
}

node_network_down() {
  node_names
  if ip netns list | grep -qw "$netns"; then
    ip netns delete "$netns"
  fi
  if ip link show "$veth" >/dev/null 2>&1; then
    ip link delete "$veth"
  fi
}

# node_cgroups_up / down: the pods' cgroup root in each v1 hierarchy.
node_cgroups_up() {
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [ "$hierarchy" = /sys/fs/cgroup/unified/ ] && continue
    mkdir -p "$hierarchy${cgroup#/}"
  done
}

node_cgroups_down() {
  local hierarchy attempt left
  # Leaves first: a cgroup goes once it has no children; one whose last
  # process just exited may refuse for a moment.
  for ((attempt = 0; attempt < 20; attempt++)); do
    left=0
    for hierarchy in /sys/fs/cgroup/*/; do
      [ -d "$hierarchy${cgroup#/}" ] || continue
      find "$hierarchy${cgroup#/}" -depth -type d -exec rmdir {} + 2>/dev/null || left=1
    done
    [ "$left" = 0 ] && return
    sleep 0.25
  done
  echo "e2e/cluster: cgroups under $cgroup are still in use" >&2
}

node_configs() {
  local node="$dir/node"
  mkdir -p "$node/cni" "$node/certs.d" "$node/logs" "$node/flexvolume"
  cat >"$node/containerd.toml" <<EOF
version = 3
root = "$node/containerd"
state = "$node/containerd-state"

[grpc]
  address = "$node/containerd.sock"

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # This machine withholds CAP_SYS_RESOURCE even from root: no process may
  # lower its oom_score_adj, which kubelet asks for pod sandboxes.
  restrict_oom_score_adj = true
  # The pods' network namespaces under DIR, where down unmounts them.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$node/cni"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "$(command -v runc)"
      Root = "$node/runc"
      SystemdCgroup = false

[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$pause_image"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$node/certs.d"

[plugins.'io.containerd.nri.v1.nri']
  disable = true
EOF
  cat >"$node/cni/10-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$node/cni-ipam",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "10.244.0.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  : >"$node/resolv.conf"
  # kubelet's image credential provider, the hardened node pull mode
  # (manifests/nodes.md, "Pulls as the pod"): the product's own binary, for
  # the images of one namespace only, so that every other pull goes the
  # default install's way (the node pull endpoint's own token).
  local plugin="${E2E_CONNECTORS:-$root/target/debug/connectors}"
  [ -x "$plugin" ] || die "no product binary at $plugin for kubelet's credential provider (cargo build, or set E2E_CONNECTORS)"
  mkdir -p "$node/credential-provider"
  ln -sf "$(readlink -f "$plugin")" "$node/credential-provider/connectors"
  cat >"$node/credential-provider.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: connectors
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: ["credential-provider"]
    matchImages: ["127.0.0.1:7480/namespaces/node-hardened"]
    defaultCacheDuration: 1m
    tokenAttributes:
      serviceAccountTokenAudience: connectors-proxy
      cacheType: Token
      requireServiceAccount: true
EOF
  cat >"$node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
# This machine mounts cgroup v1 hierarchies: allowed, with cgroupfs.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup
failSwapOn: false
containerRuntimeEndpoint: unix://$node/containerd.sock
podLogsDir: $node/logs
volumePluginDir: $node/flexvolume
resolvConf: $node/resolv.conf
clusterDomain: cluster.local
registerNode: true
rotateCertificates: false
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  cat >"$node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $dir/pki/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: e2e-node
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$node_ip/32"]
# Leave the machine's conntrack settings alone.
conntrack:
  maxPerCore: 0
EOF
}

# node_start NAME ARGS...: like start, in the node's network namespace.
node_start() {
  local name="$1" program
  shift
  case "$name" in
    containerd) program=("$node_bin/containerd") ;;
    *) program=("$harness" "$name") ;;
  esac
  PATH="$node_bin:$PATH" setsid nsenter --net="/run/netns/$netns" "${program[@]}" "$@" \
    >"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pids/$name.pid"
}

ctr_() {
  "$node_bin/ctr" --address "$dir/node/containerd.sock" --namespace k8s.io "$@"
}

# node_images: the pause image, built from scratch with buildah and imported.
node_images() {
  local storage="$dir/node/buildah" container
  local buildah_=(buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs)
  container="$("${buildah_[@]}" from scratch)"
  "${buildah_[@]}" copy "$container" "$node_bin/pause" /pause >/dev/null
  "${buildah_[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$container"
  "${buildah_[@]}" commit -q "$container" "oci-archive:$dir/node/pause.tar:$pause_image" >/dev/null
  "${buildah_[@]}" rm "$container" >/dev/null
  rm -rf "$storage"
  ctr_ images import --no-unpack=false "$dir/node/pause.tar" >/dev/null
}

# node_up: after the control plane, the node; returns once it is Ready.
node_up() {
  node_configs
  node_cgroups_up
  node_start containerd --config "$dir/node/containerd.toml"
  wait_for containerd 60 ctr_ version
  node_images
  mkdir -p "$kubelet_root"
  echo "$dir" >"$kubelet_owner"
  node_start kubelet --config "$dir/node/kubelet.yaml" \
    --kubeconfig "$dir/pki/kubelet.kubeconfig" \
    --root-dir "$kubelet_root" --cert-dir "$dir/node/kubelet-pki" \
    --hostname-override e2e-node --node-ip "$node_ip" \
    --image-credential-provider-config "$dir/node/credential-provider.yaml" \
    --image-credential-provider-bin-dir "$dir/node/credential-provider"
  node_start kube-proxy --config "$dir/node/kube-proxy.yaml"
  wait_for "the node" 120 kubectl_ wait --for condition=Ready --timeout 5s node/e2e-node
}

# node_down: every container and pod sandbox, the node's programs, mounts
# and cgroups (the namespace goes after the control plane in it).
node_down() {
  [ -d "$dir/node" ] || return 0
  node_names
  stop kube-proxy
  stop kubelet
  local runc_root="$dir/node/runc/k8s.io" container
  if [ -d "$runc_root" ]; then
    for container in $(runc --root "$runc_root" list -q 2>/dev/null); do
      runc --root "$runc_root" delete --force "$container" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  pkill -KILL -f "containerd-shim-runc-v2 .*$dir/node/containerd.sock" 2>/dev/null || true
  local mounts owned=0
  [ "$(cat "$kubelet_owner" 2>/dev/null)" = "$dir" ] && owned=1
  mounts="$(findmnt -rn -o TARGET | grep -F "$dir/node/" || true)"
  if [ "$owned" = 1 ]; then
    # NB: kubelet bind-mounts its directory onto itself, too.
    mounts="$mounts"$'\n'"$(findmnt -rn -o TARGET | grep -E "^$kubelet_root(/|\$)" || true)"
  fi
  mounts="$(printf '%s\n' "$mounts" | grep -v '^$' | sort -r || true)"
  if [ -n "$mounts" ]; then
    printf '%s\n' "$mounts" | xargs -r -d '\n' umount -l 2>/dev/null || true
  fi
  if [ "$owned" = 1 ]; then
    rm -rf "$kubelet_root"
  fi
  node_cgroups_down
}

# The proxy's pinned ClusterIP: pods reach the proxy there (the cluster runs
# no DNS). Nodes pull from the node pull endpoint on their loopback, as in
# the default install: nothing on the node names the proxy.
proxy_address=10.96.100.100

# node_install: the product as pods, from its image, installed with Helm
# (charts/connectors, whose defaults render manifests/ exactly: tests/helm.rs)
# with only what a single-node cluster without DNS needs: the proxy's pinned
# ClusterIP as the address pods (and the node pull endpoint) reach it and as
# the forward proxy's, and egress allowed to the node's address (where the
# tests run their registries). The node itself is not touched. The release
# `connectors` lives in `default`; tests/node.rs upgrades it.
node_install() {
  local image="$root/target/image/connectors.oci.tar"
  if [ -z "${E2E_IMAGE:-}" ]; then
    bash "$root/image/build" >"$logs/image.log" 2>&1 ||
      { tail -20 "$logs/image.log" >&2; die "building the product's image failed (log: $logs/image.log)"; }
  else
    image="$E2E_IMAGE"
  fi
  ctr_ images import "$image" >>"$logs/install.log" 2>&1 ||
    { tail -5 "$logs/install.log" >&2; die "importing $image into containerd failed"; }
  # The shortest token lifetime the API allows (kubelet refreshes at 80%),
  # so that a test sees kubelet republish the volume with a new token.
  cat >"$dir/values.yaml" <<YAML
# Generated by e2e/cluster: the local specifics of a single-node cluster.
proxy:
  clusterIP: "$proxy_address"
  address: "$proxy_address"
  forwardAddress: "$proxy_address:3128"
egressAllow: ["$node_ip/32"]
csi:
  tokenExpirationSeconds: 600
# A CA rotation's phases, short enough for a test to see both (kubelet
# refreshes ConfigMap and Secret volumes within about a minute).
extraConfig:
  CONNECTORS_CA_OVERLAP_SECONDS: "120"
YAML
  "$helm" --kubeconfig "$dir/kubeconfig" --namespace default install connectors "$root/charts/connectors" \
    --values "$dir/values.yaml" >>"$logs/install.log" 2>&1 ||
    { tail -20 "$logs/install.log" >&2; die "installing charts/connectors failed"; }
  local deployment
  for deployment in connectors-controller connectors-webhook connectors-proxy; do
    wait_for "deployment $deployment" 180 kubectl_ -n connectors-system wait \
      --for condition=Available --timeout 5s "deployment/$deployment"
  done
  wait_for "the node pull endpoint" 180 kubectl_ -n connectors-csi rollout status \
    --timeout 5s daemonset/connectors-node-pull
}
