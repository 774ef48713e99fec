"""The Kubernetes backend: experiments as Jobs on a cluster, locked down like the Docker sandbox.

    manifests.py  every object, built from a JobSpec and the cluster settings (pure)
    runner.py     KubernetesRunner (sandbox.runner.Runner) and make_kubernetes_runner(settings)
    podwatch.py   watching a job's pod;  follow.py  its live log
    podfetch.py   the program a fetch pod runs;  fetch.py  the host's side of it
    prepare.py    `python -m sandbox.kubernetes.prepare`: the data on the cluster's volume
    sample.py     the manifests of a sample experiment (`python -m controller k8s-manifests`)

Only runner.py and prepare.py need the `kubernetes` client (pip install 'overnight[kubernetes]').
See docs/kubernetes.md.
"""
