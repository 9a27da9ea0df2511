"""`make demo`: the whole llmforge flow for real on one CPU machine, with no GPU, Docker or cluster.

1. builds a tiny Llama and its data locally (llmforge_trainer.tiny);
2. starts a real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) plus the local
   kubelet, installs the CRDs and starts the operator with `LLMFORGE_RUNTIME=local`;
3. applies examples/00-quickstart.yaml: a FineTuneJob, an Evaluation and a ModelDeployment;
4. the operator builds the same Jobs and Deployments it would on GKE; the scheduler binds their pods to
   the `llmforge-local` node, where the local kubelet runs their commands (llmforge-train, llmforge-eval,
   llmforge-serve with vLLM) as processes and reports their status back;
5. prints `kubectl get llmforge` whenever it changes, then a completion from the served endpoint.

Everything a person sees in status came from work that ran. `--keep` leaves the cluster up afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import assets
from .cluster import LocalCluster, free_port
from .kubelet import LocalKubelet

REPO = assets.REPO_ROOT
ROOT = Path("/tmp/llmforge-quickstart")  # examples/00-quickstart.yaml names these paths
EXAMPLE = REPO / "examples" / "00-quickstart.yaml"


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def build_assets(root: Path) -> None:
    model, data = root / "tiny-llama", root / "data"
    if (model / "config.json").exists() and (data / "test.jsonl").exists():
        print(f"reusing {model} and {data}")
        return
    subprocess.run([sys.executable, "-m", "llmforge_trainer.tiny", "--out", str(model), "--data", str(data),
                    "--test"], check=True)


def kubectl(kubeconfig: str, *args: str, check: bool = True) -> str:
    out = subprocess.run([str(assets.find("kubectl")), "--kubeconfig", kubeconfig, *args], capture_output=True,
                         text=True, timeout=120)
    if check and out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def start_operator(kubeconfig: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": kubeconfig, "LLMFORGE_RUNTIME": "local",
           "LLMFORGE_METRICS_PORT": str(free_port()),
           "LLMFORGE_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
           "LLMFORGE_PROGRESS_INTERVAL_SECONDS": "5", "LLMFORGE_COST_INTERVAL_SECONDS": "5"}
    return subprocess.Popen([sys.executable, "-m", "llmforge.cli.main", "operator"], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def phases(kubeconfig: str, namespace: str = "default") -> dict[str, str]:
    out = kubectl(kubeconfig, "-n", namespace, "get", "llmforge", "-o",
                  "jsonpath={range .items[*]}{.kind}={.status.phase}{\"\\n\"}{end}", check=False)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def watch(kubeconfig: str, timeout: float, namespace: str = "default") -> dict[str, str]:
    """Print `kubectl get llmforge` on change until everything settles or fails."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        table = kubectl(kubeconfig, "-n", namespace, "get", "llmforge", check=False)
        shown = "\n".join(line.rsplit(None, 1)[0] for line in table.splitlines() if line.strip())  # minus AGE
        if shown != last:
            print(f"\n$ kubectl get llmforge   # t+{int(timeout - (deadline - time.monotonic()))}s\n{table}",
                  end="", flush=True)
            last = shown
        state = phases(kubeconfig, namespace)
        done = (state.get("FineTuneJob") == "Succeeded" and state.get("Evaluation") in ("Succeeded", "Failed")
                and state.get("ModelDeployment") == "Ready")
        if done or "Failed" in (state.get("FineTuneJob"), state.get("Evaluation")):
            return state
        time.sleep(3)
    return phases(kubeconfig, namespace)


def complete(prompt: str, base_url: str = "http://127.0.0.1:8000/v1") -> str:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="demo")
    chat = client.chat.completions.create(model="quickstart", messages=[{"role": "user", "content": prompt}],
                                          max_tokens=24, temperature=0)
    return chat.choices[0].message.content or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster and operator running")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the flow")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()

    say("1/5 building a tiny Llama, its tokenizer and data (cached after the first run)")
    build_assets(ROOT)

    say("2/5 starting a local control plane, the local kubelet and the operator (runtime: local)")
    for stale in ("cluster", "pods", "runs"):  # every run starts from an empty cluster and no outputs
        shutil.rmtree(ROOT / stale, ignore_errors=True)
    cluster = LocalCluster(work_dir=ROOT / "cluster", die_with_parent=not args.keep)
    cluster.start()
    kubeconfig = cluster.kubeconfig
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    kubelet = LocalKubelet(client.ApiClient(cfg), ROOT / "pods").start()
    operator = None
    try:
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl(kubeconfig, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        operator = start_operator(kubeconfig, ROOT / "operator.log")
        print(f"kubeconfig: {kubeconfig}\noperator log: {ROOT / 'operator.log'}\npod logs: {ROOT / 'pods'}")

        say(f"3/5 applying {EXAMPLE.relative_to(REPO)}")
        print(kubectl(kubeconfig, "apply", "-f", str(EXAMPLE)), end="")

        say("4/5 training with QLoRA on CPU, evaluating against the base, serving with vLLM")
        state = watch(kubeconfig, args.timeout)
        print(kubectl(kubeconfig, "get", "finetunejob", "quickstart", "-o", "jsonpath={.status.cost}"))

        say("5/5 a completion from the served endpoint (the adapter `quickstart`)")
        # The final statuses, for people and for tests/e2e: what the run really produced.
        (ROOT / "status.json").write_text(kubectl(kubeconfig, "get", "llmforge", "-o", "json"))
        if state.get("ModelDeployment") == "Ready":
            prompt = "What sound does a cat make?"
            text = complete(prompt)
            (ROOT / "completion.txt").write_text(text)
            print(f"prompt: {prompt}\ncompletion: {text!r}")
        else:
            print(f"not serving: {state}; see {ROOT / 'operator.log'} and {ROOT / 'pods'}")
            return 1
        print(f"\ndemo finished in {time.monotonic() - started:.0f}s")
        return 0 if state.get("FineTuneJob") == "Succeeded" else 1
    finally:
        if not args.keep:
            if operator is not None and operator.poll() is None:
                os.killpg(operator.pid, signal.SIGTERM)
                operator.wait(timeout=30)
            kubelet.stop()
            cluster.stop(keep_logs=True)


if __name__ == "__main__":
    sys.exit(main())
