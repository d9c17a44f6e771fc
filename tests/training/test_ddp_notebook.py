"""`tbkit.train(devices=2)` from a real Jupyter kernel, on a model class defined in a cell: the
reason tbkit forks its DDP workers (``ddp_fork``). ``ddp`` would re-execute the kernel's command
line, and ``ddp_spawn`` would have to unpickle the cell's class in a fresh interpreter, where it
does not exist."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

pytest.importorskip("lightning", reason="lightning is a tier3 extra (scripts/test.sh installs .[all])")
jupyter_client = pytest.importorskip("jupyter_client", reason="jupyter_client runs the kernel")
pytest.importorskip("ipykernel", reason="ipykernel is the kernel")

CELL = textwrap.dedent("""
    import json, torch, torch.nn as nn
    import tbkit

    class CellDecoder(nn.Module):  # lives only in this kernel's __main__
        def __init__(self, vocab=64, d=32):
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            self.rnn = nn.GRU(d, d, batch_first=True)
            self.head = nn.Linear(d, vocab)

        def forward(self, ids, attention_mask=None):
            return self.head(self.rnn(self.emb(ids))[0])

    ids = torch.randint(0, 64, (35, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)  # a fixed init: "trained" compares validation losses after 8 steps on random ids
    res = tbkit.train(CellDecoder(), ids, kind="decoder", epochs=2, batch_size=8, max_len=16, devices=2,
                      checkpoint_dir={ckdir!r}, resume=False)
    print("RESULT", json.dumps({{"distribution": res.distribution, "steps": res.global_step,
                                "trained": res.final_val_loss < res.initial_val_loss}}))
""")


@pytest.mark.slow
def test_two_processes_from_a_notebook_cell(tmp_path):
    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # PYTHONPATH (this checkout) carries over
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path), startup_timeout=120)
    seen = []

    def hook(msg):
        if msg["header"]["msg_type"] == "stream":
            seen.append(msg["content"]["text"])
        elif msg["header"]["msg_type"] == "error":
            seen.append("\n".join(msg["content"]["traceback"]))

    try:
        reply = kc.execute_interactive(CELL.format(ckdir=str(tmp_path / "ck")), timeout=300, output_hook=hook)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    text = "".join(seen)
    assert reply["content"]["status"] == "ok", text[-3000:]
    (line,) = [x for x in text.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line[len("RESULT ") :])
    assert "2 processes" in out["distribution"] and "ddp_fork" in out["distribution"]
    assert out["steps"] == 8 and out["trained"]  # 31 training blocks: 15 per process, 4 steps of 4 per epoch
    assert (tmp_path / "ck" / "last.ckpt").is_file()
