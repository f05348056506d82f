"""Test-wide setup: offline, project-local caches, small thread counts; the `requires_cuda` marker."""
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

if not torch.cuda.is_available():  # no GPU: Triton kernels run on CPU through its interpreter; set before any
    os.environ.setdefault("TRITON_INTERPRET", "1")  # kernel is defined. A GPU machine uses the real compiler.

from core.env import set_offline_defaults  # noqa: E402

set_offline_defaults()

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)



class SmallFilesystem:
    """Real tmpfs file systems of a given size (a real full disk for fault tests), unmounted at the end."""

    def __init__(self):
        self.mounted = []

    def mount(self, folder, size_kib: int):
        """Mount a ``size_kib`` KiB tmpfs at ``folder``; skips the test where this process may not mount."""
        import subprocess

        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or 'mount failed'}); the full-disk "
                        f"case needs root or mount permission")
        self.mounted.append(folder)
        return folder

    @staticmethod
    def fill(folder) -> None:
        """Write into ``folder`` until its file system refuses more bytes (ENOSPC)."""
        import os

        fd = os.open(folder / ".filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)

    def unmount_all(self) -> None:
        import subprocess

        for folder in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_filesystem():
    fs = SmallFilesystem()
    yield fs
    fs.unmount_all()
