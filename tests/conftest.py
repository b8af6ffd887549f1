import os
import tempfile

# Tests never touch the network: the Hub is offline for every test (set before huggingface_hub is
# imported, which reads it once), so mft's reachability check answers at once without a lookup.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# mft's cache (the training section's field table) goes to a folder of this test session, not ~/.cache.
os.environ.setdefault("MFT_CACHE", tempfile.mkdtemp(prefix="mft-test-cache-"))

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test models are tiny: more intra-op threads only cost time, a lot of it on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
