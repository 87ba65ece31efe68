"""The worker path never imports torch: load a real exported model as the worker does
(checksums, warm-up, canary), embed items, score a batch, then look at sys.modules."""

import subprocess
import sys

from export.registry import Registry
from tests.integration.conftest import REPO

SCRIPT = """
import sys
import stream_app.cli, stream_app.app, stream_app.worker  # everything `streamrec worker` imports
from state.window import UserWindow, WindowEvent
from core.contracts import Item
from stream_app.serving import load_recommender
from core.settings import Settings

recommender = load_recommender(Settings(registry={"path": sys.argv[1]}), sys.argv[2])
items = [Item(item_id=str(i), title=f"Movie {i} (1995)", categories=["Drama"]) for i in range(1, 40)]
recommender.add_items(items, recommender.embed_items(items))
window = UserWindow().with_events([WindowEvent("e1", "1", "click", 1.0), WindowEvent("e2", "2", "view", 2.0)],
                                  50, 1e9)
(ranked,) = recommender.recommend([window])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnxscript"))
print(len(ranked), recommender.runtime.user_encoder is not None, heavy)
"""


def test_worker_scores_a_trained_model_without_torch(two_tower_registry):
    version = Registry(two_tower_registry).versions()[-1]
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(two_tower_registry), version],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "10 True []"
