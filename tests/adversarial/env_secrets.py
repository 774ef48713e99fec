"""Case env_secrets: look for secrets: the environment (its own and PID 1's), the usual credential
files, and any file a host might leave (a .env, ~/.docker/config.json, ~/.netrc, cloud keys).

Expected: the environment holds exactly the variables the sandbox lists, no API key or token;
none of the credential files exist; scored like the seed. (The test puts a canary API key in the
controller's own environment and a .env; neither may appear here.)"""

import json
import os
import re

import torch

from evaluator import run_context, submit

CASE = "env_secrets"
SECRETISH = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|ANTHROPIC|AWS|DOCKER|SSH", re.IGNORECASE)
CANARY = "sk-ant-" + "canary"  # built, so this source itself does not hold it
FILES = [
    "/.env",
    "/work/.env",
    "/root/.docker/config.json",
    "/root/.netrc",
    "/root/.ssh/id_rsa",
    "/root/.aws/credentials",
    "/run/secrets",
    "/var/run/secrets",
    "/etc/shadow",
    "~/.docker/config.json",
    "~/.netrc",
    "~/.config/anthropic",
    "~/.aws/credentials",
    "~/.ssh/id_rsa",
    "~/.env",
    "~/.bash_history",
]


def report(**facts):
    print("ADVERSARIAL " + json.dumps({"case": CASE, **facts}, default=str), flush=True)


def readable(path):
    path = os.path.expanduser(path)
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        return "readable"
    except IsADirectoryError:
        return "readable" if os.access(path, os.R_OK) else "unreadable"
    except PermissionError:
        return "unreadable"
    except OSError:
        return "absent"


def canary_in_tree(root):
    found = []
    for dirpath, _dirnames, filenames in os.walk(root, onerror=lambda e: None):
        for name in filenames:
            try:
                with open(os.path.join(dirpath, name), "rb") as fh:
                    if CANARY.encode() in fh.read(1 << 20):
                        found.append(os.path.join(dirpath, name))
            except OSError:
                pass
    return found


try:
    pid1_environ = open("/proc/1/environ", "rb").read().decode("utf-8", "replace").split("\0")
except OSError as exc:
    pid1_environ = [f"<{exc.strerror}>"]
report(
    environ_keys=sorted(os.environ),
    secretish_keys=sorted(k for k in os.environ if SECRETISH.search(k)),
    canary_in_environ=any(CANARY in v for v in os.environ.values()),
    canary_in_pid1_environ=any(CANARY in v for v in pid1_environ),
    credential_files={p: readable(p) for p in FILES},
    canary_files=canary_in_tree("/work")
    + canary_in_tree("/data")
    + canary_in_tree("/etc")
    + canary_in_tree(os.path.expanduser("~"))
    + canary_in_tree("/tmp")
    + canary_in_tree("/opt/overnight"),
)

if __name__ == "__main__":  # alone it is a whole train.py: it ends like the honest seed
    vocab = run_context().profile.vocab_size
    torch.manual_seed(0)
    submit(torch.nn.Embedding(vocab, vocab))
