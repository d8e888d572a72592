#!/usr/bin/env python3
"""Checks of deploy/ that no schema makes (called by scripts/check-deploy.sh).

  check_deploy.py manifests FILE...           the rendered Kubernetes manifests hang together
                                              and keep the sidecar's security properties
  check_deploy.py config --bin BIN FILE...    each tenant-proxy pod's files, laid out as the
                                              kubelet would mount them, pass `tenant-proxy check`
  check_deploy.py compose COMPOSE_FILE          Prometheus and Grafana in docker-compose.yml are
                                              wired to the proxy, the rules and the dashboard
  check_deploy.py metrics --catalogue RS --promtool PROMTOOL --rules FILE... --dashboard FILE...
                                              every metric and label the alert rules and the
                                              dashboard use exists in the catalogue, and every
                                              dashboard query is valid PromQL

Exits 1 with one line per problem.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib

import yaml

PROXY = "tenant-proxy"  # the proxy container's name in every pod
CAPTURE = "capture-rules"  # the sidecar's init container that installs the capture rules
PROXY_UID = 1337

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def load_docs(paths):
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    docs.append((path, doc))
    return docs


def ident(doc):
    meta = doc.get("metadata", {})
    return f"{doc.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


def pods(docs):
    """(path, workload, pod spec, pod labels, namespace) of every pod template."""
    for path, doc in docs:
        if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            tmpl = doc["spec"]["template"]
            yield (path, doc, tmpl["spec"], tmpl.get("metadata", {}).get("labels", {}),
                   doc["metadata"].get("namespace"))


def all_containers(spec):
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def configmaps(docs):
    return {(d["metadata"].get("namespace"), d["metadata"]["name"]): d
            for _, d in docs if d.get("kind") == "ConfigMap"}


def proxy_config(docs, spec, ns):
    """The proxy's static configuration and tenant file (parsed) from the rendered ConfigMap."""
    cms = configmaps(docs)
    for vol in spec.get("volumes", []):
        if vol["name"] == "config" and "configMap" in vol:
            cm = cms.get((ns, vol["configMap"]["name"]))
            if cm:
                data = cm.get("data", {})
                return (tomllib.loads(data.get("tenant-proxy.toml", "")),
                        tomllib.loads(data.get("tenants.toml", "")))
    return None, None


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def flag(args, name):
    """The value after `name` in an argument list (None when absent)."""
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


# ---------------------------------------------------------------------------------------------
# manifests


def check_security(where, c, spec):
    sc = c.get("securityContext", {})
    caps = sc.get("capabilities", {})
    if caps.get("drop") != ["ALL"]:
        problem(where, "must drop ALL capabilities")
    if sc.get("allowPrivilegeEscalation") is not False:
        problem(where, "must set allowPrivilegeEscalation: false")
    if sc.get("privileged"):
        problem(where, "must not be privileged")
    if sc.get("readOnlyRootFilesystem") is not True:
        problem(where, "must have a read-only root filesystem")
    uid = sc.get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
    if c["name"] == CAPTURE:
        # Only the capture rules need a capability, and only this one.
        if caps.get("add") != ["NET_ADMIN"]:
            problem(where, f"may add exactly NET_ADMIN, adds {caps.get('add')}")
        return
    if caps.get("add"):
        problem(where, f"adds capabilities {caps['add']}: only `{CAPTURE}` may (NET_ADMIN)")
    if sc.get("runAsNonRoot") is not True:
        problem(where, "must set runAsNonRoot: true")
    if c["name"] == PROXY:
        if uid != PROXY_UID:
            problem(where, f"the proxy must run as uid {PROXY_UID} (the uid the capture rules let through), not {uid}")
    elif uid is None:
        # SECURITY: the image's USER could be the proxy's uid, which the capture rules let
        # through: every other container names its uid.
        problem(where, "must set runAsUser (an image's default user could be the proxy's uid)")
    elif uid == PROXY_UID:
        problem(where, f"runs as uid {PROXY_UID}: its traffic would bypass the capture rules")


def check_resources(where, c):
    res = c.get("resources", {})
    for kind in ("cpu", "memory"):
        if kind not in res.get("requests", {}):
            problem(where, f"no {kind} request")
    if "memory" not in res.get("limits", {}):
        problem(where, "no memory limit")


def check_probes(where, c, static):
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    listen = static.get("admin", {}).get("listen", "127.0.0.1:9090")  # the proxy's default
    admin = port_of(listen)
    if listen.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]"):
        problem(where, f"[admin] listens on {listen}: the kubelet's probes and Prometheus cannot reach it")
    if ports.get("admin") != admin:
        problem(where, f"port `admin` is {ports.get('admin')}, the configuration's admin port is {admin}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", admin):
            problem(where, f"{probe} must be GET {path} on the admin port, is {get}")


def check_env(where, c, static):
    env = {e["name"] for e in c.get("env", [])}
    literal = {e["name"] for e in c.get("env", []) if "value" in e}
    for table in ("limiter", "audit"):
        t = static.get(table, {})
        if "redis_url" in t:
            problem(where, f"[{table}] redis_url is in the ConfigMap: take it from a Secret (redis_url_env)")
        name = t.get("redis_url_env")
        if name and name not in env:
            problem(where, f"[{table}] redis_url_env names `{name}`, which the container does not set")
        if name in literal:
            problem(where, f"`{name}` is a literal: the Redis URL (and its password) must come from a Secret")


def check_capture(where, spec, static):
    """The sidecar's capture rules and its transparent listener agree, and start in order."""
    init = spec.get("initContainers", [])
    names = [c["name"] for c in init]
    capture = next((c for c in init if c["name"] == CAPTURE), None)
    transparent = [l for l in static.get("listener", []) if l.get("kind") == "transparent"]
    if capture is None:
        if transparent:
            problem(where, "a transparent listener but no capture-rules init container")
        return
    args = capture.get("args", [])
    if args[:1] != ["sidecar-init"] or "--apply" not in args:
        problem(where, f"`{CAPTURE}` must run `sidecar-init ... --apply`, runs {args}")
    if flag(args, "--proxy-uid") != str(PROXY_UID):
        problem(where, f"`{CAPTURE}` lets uid {flag(args, '--proxy-uid')} through, the proxy runs as {PROXY_UID}")
    if len(transparent) != 1:
        problem(where, f"expected one transparent listener, found {len(transparent)}")
    elif flag(args, "--port") != str(port_of(transparent[0]["listen"])):
        problem(where, f"`{CAPTURE}` redirects to port {flag(args, '--port')}, the transparent listener is {transparent[0]['listen']}")
    elif "binding" not in transparent[0].get("identity", []) or transparent[0].get("identity") != ["binding"]:
        problem(where, "the transparent listener's identity must be its binding alone")
    elif not transparent[0]["listen"].startswith("[::]:"):
        # REDIRECT sends IPv6 to ::1: a listener on 0.0.0.0 would leave IPv6 connections with
        # nowhere to go.
        problem(where, f"the transparent listener listens on {transparent[0]['listen']}: it must be `[::]:PORT` to take redirected IPv6 as well as IPv4")
    # SECURITY: the proxy is a native sidecar after the rules, so the agent starts only once the
    # rules are in place and the proxy is ready.
    if PROXY not in names or names.index(PROXY) < names.index(CAPTURE):
        problem(where, f"`{PROXY}` must be an init container after `{CAPTURE}`")
    else:
        proxy = init[names.index(PROXY)]
        if proxy.get("restartPolicy") != "Always":
            problem(where, f"`{PROXY}` must be a native sidecar (restartPolicy: Always)")
        if "startupProbe" not in proxy:
            problem(where, f"`{PROXY}` needs a startupProbe so the agent waits for it")
    for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        if spec.get(key):
            problem(where, f"{key} would let the agent reach past the capture rules")
    # SECURITY: the agent shares the pod's network namespace, so it reaches the admin port on
    # any address, loopback included: only the admin token keeps it from closing runs and reading
    # usage, and the token's volume must be the proxy's alone.
    token_file = static.get("admin", {}).get("token_file")
    if not token_file:
        problem(where, "a sidecar's admin port needs `[admin] token_file`: the agent shares the pod's network namespace")
    elif PROXY in names:
        proxy = init[names.index(PROXY)]
        holding = [m["name"] for m in proxy.get("volumeMounts", [])
                   if token_file.startswith(m["mountPath"].rstrip("/") + "/")]
        if not holding:
            problem(where, f"`{token_file}` is in no volume the proxy mounts")
        for c in all_containers(spec):
            if c["name"] != PROXY and any(m["name"] in holding for m in c.get("volumeMounts", [])):
                problem(where, f"container `{c['name']}` mounts the admin token's volume `{holding[0]}`")


def check_volumes(where, spec, docs, ns):
    cms = configmaps(docs)
    defined = {v["name"]: v for v in spec.get("volumes", [])}
    used = set()
    for c in all_containers(spec):
        for m in c.get("volumeMounts", []):
            used.add(m["name"])
            if m["name"] not in defined:
                problem(f"{where} container {c['name']}", f"mounts undefined volume `{m['name']}`")
    for name in defined:
        if name not in used:
            problem(where, f"volume `{name}` is mounted by no container")
    # A ConfigMap projected with items: every key mounted (a policy file generated but not
    # listed would silently not be loaded), every item a key.
    for vol in defined.values():
        sources = [vol] if "configMap" in vol else vol.get("projected", {}).get("sources", [])
        for src in sources:
            ref = src.get("configMap")
            if not ref or (ns, ref["name"]) not in cms:
                continue
            keys = set(cms[(ns, ref["name"])].get("data", {}))
            items = ref.get("items")
            if items is None:
                continue
            listed = {i["key"] for i in items}
            for k in sorted(keys - listed):
                problem(where, f"volume `{vol['name']}` does not mount key `{k}` of ConfigMap {ref['name']}")
            for k in sorted(listed - keys):
                problem(where, f"volume `{vol['name']}` mounts key `{k}`, missing from ConfigMap {ref['name']}")


def check_manifests(paths):
    docs = load_docs(paths)
    for path, doc, spec, labels, ns in pods(docs):
        where = f"{path}: {ident(doc)}"
        names = [c["name"] for c in all_containers(spec)]
        if PROXY not in names:
            problem(where, f"no `{PROXY}` container")
            continue
        proxy = all_containers(spec)[names.index(PROXY)]
        static, tenants = proxy_config(docs, spec, ns)
        if static is None:
            problem(where, "no `config` volume from a rendered ConfigMap with tenant-proxy.toml")
            continue
        if spec.get("automountServiceAccountToken") is not False:
            problem(where, "automountServiceAccountToken must be false")
        for c in all_containers(spec):
            check_security(f"{where} container {c['name']}", c, spec)
            check_resources(f"{where} container {c['name']}", c)
        for c in all_containers(spec):
            # Containers that run tenant-proxy subcommands (capture rules, trust bundle).
            if c.get("args", [])[:1] in (["sidecar-init"], ["ca"]) and c.get("image") != proxy.get("image"):
                problem(f"{where} container {c['name']}", f"runs image {c.get('image')}, the proxy {proxy.get('image')}: one build of tenant-proxy per pod")
        check_probes(f"{where} container {PROXY}", proxy, static)
        check_env(f"{where} container {PROXY}", proxy, static)
        check_capture(where, spec, static)
        check_volumes(where, spec, docs, ns)
        check_selectors(where, docs, doc, labels, ns, proxy, static)
    return docs


def check_selectors(where, docs, workload, labels, ns, proxy, static):
    name = workload["metadata"]["name"]
    if not selects(workload["spec"]["selector"].get("matchLabels"), labels):
        problem(where, "the selector does not match the pod template's labels")
    ports = {p["name"]: p["containerPort"] for p in proxy.get("ports", [])}
    listener_ports = {port_of(l["listen"]) for l in static.get("listener", [])}
    for path, d in docs:
        kind, meta = d.get("kind"), d["metadata"]
        if meta.get("namespace") != ns:
            continue
        w = f"{path}: {ident(d)}"
        if kind == "Service" and selects(d["spec"].get("selector"), labels):
            for p in d["spec"]["ports"]:
                target = ports.get(p.get("targetPort"), p.get("targetPort"))
                if target not in listener_ports:
                    problem(w, f"port {p.get('name')} targets {p.get('targetPort')}, which is no proxy listener ({sorted(listener_ports)})")
        if kind == "PodDisruptionBudget" and not selects(d["spec"]["selector"].get("matchLabels"), labels):
            problem(w, f"selects no pod of {name}")
        if kind == "HorizontalPodAutoscaler":
            ref = d["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) != (workload["kind"], name):
                problem(w, f"scales {ref['kind']}/{ref['name']}, not {workload['kind']}/{name}")
            elif "replicas" in workload["spec"]:
                problem(where, "sets `replicas` although an autoscaler owns it (every apply would reset it)")
        if kind == "NetworkPolicy":
            sel = d["spec"]["podSelector"].get("matchLabels", {})
            if sel and not selects(sel, labels) and meta["name"] in (name, PROXY):
                problem(w, f"named for {name} but selects none of its pods")


# ---------------------------------------------------------------------------------------------
# config: lay out the proxy's files as the kubelet would and run `tenant-proxy check`


class Fixtures:
    """Stand-ins for the objects the operator creates (Secrets, the JWKS ConfigMap), made with
    the proxy's own commands so they are what the proxy expects."""

    def __init__(self, binary, work):
        self.binary, self.work, self.made = binary, work, {}

    def run(self, *args):
        r = subprocess.run([self.binary, *args], capture_output=True, text=True, cwd=self.work)
        if r.returncode != 0:
            raise SystemExit(f"tenant-proxy {' '.join(args)} failed:\n{r.stdout}{r.stderr}")

    def files(self, kind, name, wanted_keys):
        key = (kind, name)
        if key not in self.made:
            d = os.path.join(self.work, f"{kind}-{name}")
            os.makedirs(d)
            if (kind, name) == ("secret", "tenant-proxy-ca"):
                self.run("ca", "init", "--out", os.path.join(d, "ca"))
                os.rename(os.path.join(d, "ca", "ca.pem"), os.path.join(d, "ca.pem"))
                os.rename(os.path.join(d, "ca", "ca-key.pem"), os.path.join(d, "ca-key.pem"))
            elif (kind, name) == ("secret", "tenant-proxy-audit-key"):
                self.run("audit", "keygen", "--out", os.path.join(d, "k"))
                os.rename(os.path.join(d, "k", "audit-signing-key.pem"), os.path.join(d, "audit-signing-key.pem"))
            elif (kind, name) == ("configmap", "tenant-proxy-jwks"):
                self.run("token", "keygen", "--kid", "check", "--out", os.path.join(d, "k.pem"),
                         "--jwks", os.path.join(d, "jwks.json"))
                os.remove(os.path.join(d, "k.pem"))
            elif (kind, name) == ("secret", "tenant-proxy-admin-token"):
                with open(os.path.join(d, "token"), "w") as f:
                    f.write(os.urandom(32).hex() + "\n")
            elif (kind, name) == ("secret", "tenant-proxy-redis"):
                with open(os.path.join(d, "url"), "w") as f:
                    f.write("redis://127.0.0.1:6379")
            elif kind == "secret" and name.startswith("tenant-proxy-credentials-"):
                # One value per key the pod asks for, unlike any other tenant's.
                for k in wanted_keys:
                    with open(os.path.join(d, k), "w") as f:
                        f.write(f"sk-check-deploy-{name}-{k}")
            else:
                return None
            self.made[key] = d
        d = self.made[key]
        return {k: open(os.path.join(d, k), encoding="utf-8").read() for k in os.listdir(d)
                if os.path.isfile(os.path.join(d, k))}


def volume_files(vol, docs, ns, fixtures):
    """{relative path: content} of a volume (None for an emptyDir), or an error string."""
    if "emptyDir" in vol:
        return None
    cms = configmaps(docs)
    sources = vol["projected"]["sources"] if "projected" in vol else [vol]
    out = {}
    for src in sources:
        if "configMap" in src:
            ref, kind = src["configMap"], "configmap"
            cm = cms.get((ns, ref["name"]))
            data = cm.get("data", {}) if cm else None
        elif "secret" in src:
            ref, kind = src["secret"], "secret"
            ref = dict(ref, name=ref.get("secretName", ref.get("name")))
            data = None
        else:
            return f"volume `{vol['name']}`: unsupported source {sorted(src)}"
        items = ref.get("items")
        if data is None:
            data = fixtures.files(kind, ref["name"], [i["key"] for i in items or []])
            if data is None:
                return f"volume `{vol['name']}`: {kind} `{ref['name']}` is neither rendered nor a known operator-made object"
        for k, v in data.items():
            if items is None:
                out[k] = v
        for i in items or []:
            if i["key"] not in data:
                return f"volume `{vol['name']}`: key `{i['key']}` missing from {kind} `{ref['name']}`"
            out[i["path"]] = data[i["key"]]
    return out


def container_env(c, fixtures):
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            data = fixtures.files("secret", ref["name"], [ref["key"]]) or {}
            if ref["key"] not in data:
                problem(c["name"], f"env `{e['name']}`: no fixture for secret {ref['name']} key {ref['key']}")
            env[e["name"]] = data.get(ref["key"], "")
    return env


# Keys whose values are file or directory paths (tenants_file, jwks_file, files_dir, dir,
# signing_key, ca_cert, ca_key, cert, key, client_ca, extra_ca_files, ...).
PATH_KEY = re.compile(r"(^|_)(file|files|dir|key|cert|ca)$")


def rebase_paths(text, root, mounts, where):
    """Prefixes every absolute path in a TOML text with `root`; each must lie in a mount."""
    def walk(v, key=""):
        if isinstance(v, dict):
            for k, x in v.items():
                yield from walk(x, k)
        elif isinstance(v, list):
            for x in v:
                yield from walk(x, key)
        elif isinstance(v, str) and v.startswith("/") and PATH_KEY.search(key):
            yield v
    for path in sorted(set(walk(tomllib.loads(text))), key=len, reverse=True):
        if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
            problem(where, f"`{path}` is in no volume the container mounts")
        text = text.replace(f'"{path}"', f'"{root}{path}"')
    return text


# Keys of the deploy/ configuration that the binary did not accept yet, with the equivalent the
# check applies meanwhile. Empty: `tenant-proxy check` accepts every key deploy/ uses.
PENDING_KEYS = ()


def pending_equivalent(text, env):
    return text


def check_config(paths, binary):
    docs = load_docs(paths)
    for path, doc, spec, _labels, ns in pods(docs):
        where = f"{path}: {ident(doc)}"
        proxy = next((c for c in all_containers(spec) if c["name"] == PROXY), None)
        if proxy is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            root, work = os.path.join(tmp, "root"), os.path.join(tmp, "work")
            os.makedirs(work)
            fixtures = Fixtures(binary, work)
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            mounts = {}
            for m in proxy.get("volumeMounts", []):
                files = volume_files(volumes[m["name"]], docs, ns, fixtures)
                if isinstance(files, str):
                    problem(where, files)
                    continue
                mounts[m["mountPath"]] = m
                target = root + m["mountPath"]
                os.makedirs(target, exist_ok=True)
                for rel, content in (files or {}).items():
                    os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
                    with open(os.path.join(target, rel), "w", encoding="utf-8") as f:
                        f.write(content)
            env = container_env(proxy, fixtures)
            args = proxy.get("args", [])
            config = flag(args, "--config")
            if args[:1] != ["run"] or config is None:
                problem(where, f"the proxy must run `run --config FILE`, runs {args}")
                continue
            static_path = root + config
            if not os.path.isfile(static_path):
                problem(where, f"`{config}` is in no volume")
                continue
            static_text = open(static_path, encoding="utf-8").read()
            static = tomllib.loads(static_text)
            tenants_path = os.path.join(os.path.dirname(static_path), static["tenants_file"])
            originals = {}
            for p in (static_path, tenants_path):
                text = open(p, encoding="utf-8").read()
                originals[p] = text
                with open(p, "w", encoding="utf-8") as f:
                    f.write(rebase_paths(text, root, mounts, f"{where} {os.path.basename(p)}"))
            run_env = dict(os.environ, **env)
            result = subprocess.run([binary, "check", "--config", static_path], env=run_env,
                                    capture_output=True, text=True)
            output = (result.stdout + result.stderr).replace(root, "")
            if result.returncode != 0 and any(f"unknown field `{k}`" in output for k in PENDING_KEYS):
                pending = [k for k in PENDING_KEYS
                           if any(re.search(rf"(?m)^{k} = ", t) for t in originals.values())]
                print(f"note: {where}: this tenant-proxy does not accept {pending} yet (issue 19 "
                      "item 1); checking the equivalent configuration instead", file=sys.stderr)
                for p, text in originals.items():
                    with open(p, "w", encoding="utf-8") as f:
                        f.write(rebase_paths(pending_equivalent(text, env), root, mounts, where))
                result = subprocess.run([binary, "check", "--config", static_path], env=run_env,
                                        capture_output=True, text=True)
                output = (result.stdout + result.stderr).replace(root, "")
            if result.returncode != 0:
                problem(where, "tenant-proxy check failed:\n" + output.strip())
            else:
                print(f"ok: {where}: tenant-proxy check passed")


# ---------------------------------------------------------------------------------------------
# metrics


def catalogue(rs_path):
    """{metric name: set of label names} from proxy/src/metrics.rs, histograms with their series."""
    src = open(rs_path, encoding="utf-8").read()
    out = {}
    ctor = re.compile(
        r'(IntCounterVec|HistogramVec|IntGaugeVec|IntCounter|IntGauge|Histogram)::(?:new|with_opts)\(\s*'
        r'(?:Opts::new\(|HistogramOpts::new\()?\s*"(tenant_proxy_[a-z0-9_]+)"'
        r'(.*?)\)\?,', re.S)
    for kind, name, rest in ctor.findall(src):
        labels = set()
        if kind.endswith("Vec"):
            m = re.search(r'&\[([^\]]*)\]\s*,?\s*$', rest.strip(), re.S)
            labels = set(re.findall(r'"([a-z_]+)"', m.group(1))) if m else set()
        if kind.startswith("Histogram"):
            out[name + "_bucket"] = labels | {"le"}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:
            out[name] = labels
    return out


def histogram_buckets(rs_path):
    """{histogram name: its finite bucket bounds} from proxy/src/metrics.rs: a `.buckets(vec![…])`
    or `.buckets(NAME)` after the histogram's name, NAME a `let NAME = vec![…];` of the file."""
    src = open(rs_path, encoding="utf-8").read()
    lists = {name: body for name, body in
             re.findall(r'let ([a-z_]+) = vec!\[([^\]]*)\];', src)}
    out = {}
    for name, given in re.findall(
            r'HistogramOpts::new\(\s*"(tenant_proxy_[a-z0-9_]+)".*?\.buckets\(\s*'
            r'(vec!\[[^\]]*\]|[a-z_]+)', src, re.S):
        body = given[len("vec!["):-1] if given.startswith("vec![") else lists.get(given)
        if body is None:
            continue
        out[name] = sorted(float(b.replace("_", "")) for b in re.findall(r'[0-9][0-9_.]*', body))
    return out


def quantiles_compared_above(expr):
    """(histogram, threshold) of each `histogram_quantile(…) > N` (or `>=`) in `expr`."""
    out = []
    for start in (m.end() for m in re.finditer(r'histogram_quantile\(', expr)):
        depth, end = 1, start
        while end < len(expr) and depth:
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        inner = re.search(r'\b(tenant_proxy_[a-z0-9_]+)_bucket\b', expr[start:end])
        above = re.match(r'\s*>=?\s*([0-9.]+)', expr[end:])
        if inner and above:
            out.append((inner.group(1), float(above.group(1))))
    return out


def check_buckets(rules_path, rules, buckets):
    """An alert on a quantile above the largest finite bucket never fires (a quantile past it
    reads as that bucket), and a test series with a bucket the proxy does not export tests
    another histogram than the one the proxy has."""
    for rule in rules:
        for name, threshold in quantiles_compared_above(rule["expr"]):
            if name in buckets and threshold >= buckets[name][-1]:
                problem(f"{rules_path}: {rule.get('alert') or rule.get('record')}",
                        f"compares a quantile of `{name}` with {threshold:g}, but its largest "
                        f"finite bucket is {buckets[name][-1]:g}: it can never be above that")
    tests_path = re.sub(r"\.yml$", "_test.yml", rules_path)
    if not os.path.exists(tests_path):
        return
    for test in yaml.safe_load(open(tests_path, encoding="utf-8"))["tests"]:
        for series in test.get("input_series", []):
            m = re.match(r'(tenant_proxy_[a-z0-9_]+)_bucket\{.*\ble="([^"]+)"', series["series"])
            if not m or m.group(1) not in buckets or m.group(2) == "+Inf":
                continue
            if float(m.group(2)) not in buckets[m.group(1)]:
                problem(tests_path, f"`{m.group(1)}` has no bucket le=\"{m.group(2)}\" "
                        f"(it has {', '.join(f'{b:g}' for b in buckets[m.group(1)])}, +Inf)")


METRIC = re.compile(r'\b(tenant_proxy_[a-z0-9_]+)\b(\{[^}]*\})?')
LABEL_NAMES_IN_SELECTOR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)')
GROUPING = re.compile(r'\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)')


# Labels Prometheus adds to every scraped series (deploy/prometheus/*.yml).
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
# Series Prometheus makes itself, which a rule or panel may use instead of a tenant_proxy metric.
PROMETHEUS_OWN = re.compile(r'^\s*up\{job="tenant-proxy"\}')


def check_expr(where, expr, metrics):
    used = METRIC.findall(expr)
    if not used and not PROMETHEUS_OWN.search(expr.replace("sum(", "", 1)):
        problem(where, f"uses no tenant_proxy metric: {expr}")
    names = set()
    for name, selector in used:
        if name not in metrics:
            problem(where, f"metric `{name}` is not in proxy/src/metrics.rs")
            continue
        names.add(name)
        for label in LABEL_NAMES_IN_SELECTOR.findall(selector or ""):
            if label not in metrics[name]:
                problem(where, f"`{name}` has no label `{label}` (it has {sorted(metrics[name])})")
    known = set().union(TARGET_LABELS, *(metrics[n] for n in names))
    for group in GROUPING.findall(expr):
        for label in (l.strip() for l in group.split(",")):
            if label and label not in known:
                problem(where, f"groups by `{label}`, a label none of {sorted(names)} has")


def check_alert_tests(rules_path, alerts):
    """Every alert has a promtool test case where it fires and one where it does not."""
    tests_path = re.sub(r"\.yml$", "_test.yml", rules_path)
    if not os.path.exists(tests_path):
        problem(rules_path, f"no tests ({tests_path})")
        return
    fired, silent = set(), set()
    for test in yaml.safe_load(open(tests_path, encoding="utf-8"))["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    for alert in sorted(alerts):
        for seen, how in ((fired, "firing"), (silent, "not firing")):
            if alert not in seen:
                problem(tests_path, f"no case shows `{alert}` {how}")


def grafana_to_promql(expr):
    """A dashboard query as Prometheus sees it once Grafana has filled its variables."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r'\$\{?([a-z_]+)(?::[a-z]+)?\}?', "x", expr)


def check_metrics(rs_path, promtool, rule_files, dashboards):
    metrics = catalogue(rs_path)
    if len(metrics) < 20:
        problem(rs_path, f"found only {len(metrics)} metrics: the catalogue parser is out of date")
    buckets = histogram_buckets(rs_path)
    if len(buckets) < 4:
        problem(rs_path, f"found buckets of only {len(buckets)} histograms: the parser is out of date")
    for path in rule_files:
        alerts = set()
        rules = []
        for group in yaml.safe_load(open(path, encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                check_expr(f"{path}: {rule.get('alert') or rule.get('record')}", rule["expr"], metrics)
                rules.append(rule)
                if "alert" in rule:
                    alerts.add(rule["alert"])
        check_alert_tests(path, alerts)
        check_buckets(path, rules, buckets)
    exprs = []
    for path in dashboards:
        dash = json.load(open(path, encoding="utf-8"))
        ids = [p.get("id") for p in dash.get("panels", [])]
        if len(ids) != len(set(ids)) or None in ids:
            problem(path, f"panel ids must be present and unique: {ids}")
        variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
        for v in dash.get("templating", {}).get("list", []):
            if v.get("type") == "query":
                check_expr(f"{path}: variable {v['name']}", json.dumps(v.get("query")), metrics)
        for panel in dash.get("panels", []):
            if panel.get("type") == "row":
                continue
            where = f"{path}: panel {panel.get('id')} `{panel.get('title')}`"
            if not panel.get("targets"):
                problem(where, "has no query")
            if not panel.get("gridPos"):
                problem(where, "has no gridPos")
            for t in panel.get("targets", []):
                expr = t.get("expr", "")
                check_expr(where, expr, metrics)
                for var in re.findall(r'\$\{?([a-z_]+)', expr):
                    if not var.startswith("__") and var not in variables:
                        problem(where, f"uses `${var}`, which the dashboard does not define")
                exprs.append((where, grafana_to_promql(expr)))
    # promtool parses every query: written as recording rules, one per query.
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}]}, f)
    result = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        located = [(int(m.group(1)), m.group(2)) for m in
                   re.finditer(r'group "dashboard", rule (\d+), "[^"]*": (.*)', output)]
        for rule, message in located:
            problem(exprs[rule - 1][0], f"promtool: {message}")
        if not located:
            problem("dashboard queries", f"promtool failed:\n{output}")
    print(f"ok: {len(exprs)} dashboard queries parse" if result.returncode == 0 else "dashboard queries do not parse")


# ---------------------------------------------------------------------------------------------
# compose


def mounts_of(service, compose_dir):
    """{container path: host path} of a compose service's bind mounts (host paths must exist)."""
    out = {}
    for v in service.get("volumes", []):
        host, _, rest = v.partition(":")
        if host.startswith("."):
            host = os.path.normpath(os.path.join(compose_dir, host))
            if not os.path.exists(host):
                problem(v, f"`{host}` does not exist")
            out[rest.split(":")[0]] = host
    return out


def check_compose(compose_path):
    compose_dir = os.path.dirname(os.path.abspath(compose_path))
    services = yaml.safe_load(open(compose_path, encoding="utf-8"))["services"]
    for name in ("proxy", "prometheus", "grafana"):
        if name not in services:
            problem(compose_path, f"no `{name}` service")
            return
    proxy_mounts = mounts_of(services["proxy"], compose_dir)
    config_arg = flag(services["proxy"].get("command", []), "--config")
    config_host = next((h + config_arg[len(c):] for c, h in proxy_mounts.items()
                        if config_arg and config_arg.startswith(c + "/")), None)
    if not config_host or not os.path.isfile(config_host):
        problem(compose_path, f"the proxy's --config `{config_arg}` is in no mounted directory")
        return
    admin = tomllib.load(open(config_host, "rb")).get("admin", {}).get("listen", "127.0.0.1:9090")
    if admin.startswith("127.") or admin.startswith("[::1]"):
        problem(config_host, f"[admin] listen = {admin}: Prometheus in another container cannot scrape it")

    # Prometheus: its configuration, the rule files it names, the proxy as its target.
    prom = services["prometheus"]
    prom_mounts = mounts_of(prom, compose_dir)
    config_file = (flag([a for x in prom.get("command", []) for a in x.split("=", 1)], "--config.file")
                   or "/etc/prometheus/prometheus.yml")
    if config_file not in prom_mounts:
        problem(compose_path, f"prometheus: `{config_file}` is not mounted")
        return
    prom_config = yaml.safe_load(open(prom_mounts[config_file], encoding="utf-8"))
    for rule in prom_config.get("rule_files", []):
        in_container = os.path.join(os.path.dirname(config_file), rule)
        if in_container not in prom_mounts:
            problem(compose_path, f"prometheus: rule file `{in_container}` is not mounted")
    jobs = {j["job_name"]: j for j in prom_config.get("scrape_configs", [])}
    targets = [t for sc in jobs.get("tenant-proxy", {}).get("static_configs", []) for t in sc["targets"]]
    if f"proxy:{port_of(admin)}" not in targets:
        problem(prom_mounts[config_file], f"job `tenant-proxy` does not scrape proxy:{port_of(admin)} (has {targets})")

    # Grafana: provisioning, the dashboard where the provider looks, the data source it uses.
    graf_mounts = mounts_of(services["grafana"], compose_dir)
    prov = graf_mounts.get("/etc/grafana/provisioning")
    if not prov:
        problem(compose_path, "grafana: /etc/grafana/provisioning is not mounted")
        return
    for f in sorted(os.listdir(os.path.join(prov, "dashboards"))):
        for provider in yaml.safe_load(open(os.path.join(prov, "dashboards", f)))["providers"]:
            path = provider["options"]["path"]
            dashboards = [h for c, h in graf_mounts.items() if os.path.dirname(c) == path]
            if not dashboards:
                problem(compose_path, f"grafana: nothing is mounted in the provider's path `{path}`")
            for d in dashboards:
                dash = json.load(open(d, encoding="utf-8"))
                ds_var = next((v for v in dash["templating"]["list"] if v["type"] == "datasource"), {})
                uids = set()
                for f2 in os.listdir(os.path.join(prov, "datasources")):
                    for ds in yaml.safe_load(open(os.path.join(prov, "datasources", f2)))["datasources"]:
                        uids.add(ds["uid"])
                        host = re.sub(r"^https?://([^:/]+).*", r"\1", ds["url"])
                        if host not in services:
                            problem(f2, f"data source url `{ds['url']}` names no compose service")
                if ds_var.get("current", {}).get("value") not in uids:
                    problem(d, f"the datasource variable defaults to {ds_var.get('current')}, provisioned: {sorted(uids)}")
    if not problems:
        print(f"ok: {compose_path}: Prometheus scrapes proxy:{port_of(admin)} with its rules, Grafana has the dashboard and its data source")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifests")
    m.add_argument("files", nargs="+")
    c = sub.add_parser("config")
    c.add_argument("--bin", required=True)
    c.add_argument("files", nargs="+")
    d = sub.add_parser("compose")
    d.add_argument("file")
    x = sub.add_parser("metrics")
    x.add_argument("--catalogue", required=True)
    x.add_argument("--promtool", default="promtool")
    x.add_argument("--rules", nargs="*", default=[])
    x.add_argument("--dashboard", nargs="*", default=[])
    a = ap.parse_args()
    if a.cmd == "manifests":
        check_manifests(a.files)
    elif a.cmd == "config":
        check_config(a.files, a.bin)
    elif a.cmd == "compose":
        check_compose(a.file)
    else:
        check_metrics(a.catalogue, a.promtool, a.rules, a.dashboard)
    for p in dict.fromkeys(problems):
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(dict.fromkeys(problems))} problem(s)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
