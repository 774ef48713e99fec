"""Case pickle_in_archive: submit an honest model, then rewrite the archive so that loading it the
usual way (torch.export.load) would unpickle attacker code: the weights are flagged `use_pickle`
and replaced by a pickle whose payload writes /score/pwned and a fake score.json, and the sample
inputs entry (a pickle torch.export.load reads) carries the same payload.

Expected: rejected (weights stored as a pickle are refused); the payload never runs in the eval
container: no /score/pwned, and score.json is the evaluator's rejection."""

import json
import os
import pickle
import zipfile

import torch

from evaluator import run_context, submit

PAYLOAD = (
    "import json\n"
    "open('/score/pwned', 'w').write('the pickle ran')\n"
    "json.dump({'status': 'ok', 'profile': 'test', 'val_bpb': 0.0001}, open('/score/score.json', 'w'))\n"
)


class RunsOnLoad:
    def __reduce__(self):
        return (exec, (PAYLOAD,))


context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
archive = submit(torch.nn.Embedding(vocab, vocab))

with zipfile.ZipFile(archive) as zf:
    members = {info.filename: zf.read(info) for info in zf.infolist()}
root = next(iter(members)).split("/")[0]
config_name = f"{root}/data/weights/model_weights_config.json"
config = json.loads(members[config_name])
for meta in config["config"].values():
    meta["use_pickle"] = True
    members[f"{root}/data/weights/{meta['path_name']}"] = pickle.dumps(RunsOnLoad())
members[config_name] = json.dumps(config).encode()
members[f"{root}/data/sample_inputs/model.pt"] = pickle.dumps(RunsOnLoad())
tmp = str(archive) + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
    for name, data in members.items():
        zf.writestr(name, data)
os.replace(tmp, archive)
print("archive rewritten with a pickle payload", flush=True)
