"""A session fixture: small real runs of Exp 1 and Exp 2 on the bundled toy pair, saved as RunStore writes them.

conftest.py imports the fixture, so every test module shares one instance.
"""

from __future__ import annotations

import pandas as pd
import pytest

from drope_lens.engine.results import RunStore, model_identity
from drope_lens.measurement.texts import toy_texts


@pytest.fixture(scope="session")
def toy_results(tmp_path_factory):
    """``results/`` root holding one massive_values and one disruption run of the toy pair (64 tokens)."""
    import drope_lens as dl
    from drope_lens.experiments import disruption, massive_values

    root = tmp_path_factory.mktemp("results")
    texts = toy_texts(6)
    rope, drope = dl.load_pair("toy")
    frames, ident_frames, identities = [], [], []
    for model in (rope, drope):
        frames.append(massive_values.run(model, texts[:3], max_tokens=48, show_progress=False))
        ident_frames.append(disruption.run(model, texts[:2], texts[2:5], seeds=2, max_tokens=48, show_progress=False))
        identities.append(model_identity(model))
    RunStore(root, "massive_values", "massive_values-toy").finalize(
        pd.concat(frames, ignore_index=True), {"config": {"max_tokens": 64}, "models": identities})
    RunStore(root, "disruption", "disruption-toy").finalize(
        pd.concat(ident_frames, ignore_index=True), {"config": {"max_tokens": 64, "seeds": 2}, "models": identities})
    return root
