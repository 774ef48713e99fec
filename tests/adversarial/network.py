"""Case network: open network connections: TCP to public addresses and to the host's bridge
gateway, UDP DNS, name resolution, and list the interfaces.

Expected: loopback only; every connection fails with no route, no name resolves; scored like the
seed."""

import json
import os
import socket

import torch

from evaluator import run_context, submit

CASE = "network"


def report(**facts):
    print("ADVERSARIAL " + json.dumps({"case": CASE, **facts}, default=str), flush=True)


def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "connected"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def udp(host, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"\x00" * 12, (host, port))
        return "sent"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    finally:
        sock.close()


def resolve(name):
    try:
        return socket.getaddrinfo(name, 443)[0][4][0]
    except OSError as exc:
        return f"<{type(exc).__name__}>"


report(
    interfaces=sorted(os.listdir("/sys/class/net")),
    tcp={
        f"{h}:{p}": tcp(h, p)
        for h, p in (("1.1.1.1", 443), ("8.8.8.8", 53), ("172.17.0.1", 22), ("172.17.0.1", 80), ("10.0.0.1", 80))
    },
    udp={"8.8.8.8:53": udp("8.8.8.8", 53)},
    resolve={n: resolve(n) for n in ("example.com", "huggingface.co", "api.anthropic.com")},
)

if __name__ == "__main__":  # alone it is a whole train.py: it ends like the honest seed
    vocab = run_context().profile.vocab_size
    torch.manual_seed(0)
    submit(torch.nn.Embedding(vocab, vocab))
