import importlib.metadata
import pathlib
import subprocess
import sys
import tempfile
import unittest

from authgate_client import access_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "authgate_client" / "_proto"


def tree(root: pathlib.Path) -> dict:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


class CommittedStubsTest(unittest.TestCase):
    def test_the_committed_stubs_match_the_protos(self) -> None:
        installed = importlib.metadata.version("grpcio-tools")
        self.assertEqual(
            installed,
            access_pb2_grpc.GRPC_GENERATED_VERSION,
            "the committed stubs come from another grpcio-tools than the one installed, so "
            "they cannot be compared: pip install -r requirements-test.txt",
        )
        with tempfile.TemporaryDirectory() as tmp:
            fresh_dir = pathlib.Path(tmp) / "_proto"
            generated = subprocess.run(
                [sys.executable, str(ROOT / "generate.py"), "--out", str(fresh_dir)],
                capture_output=True,
                text=True,
            )
            self.assertEqual(generated.returncode, 0, generated.stderr)
            fresh, committed = tree(fresh_dir), tree(COMMITTED)
        stale = sorted(
            name
            for name in fresh.keys() | committed.keys()
            if fresh.get(name) != committed.get(name)
        )
        self.assertEqual(
            stale,
            [],
            "the committed stubs are stale: run `python3 generate.py` in clients/python and commit",
        )


if __name__ == "__main__":
    unittest.main()
