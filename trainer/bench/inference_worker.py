"""The pyfunc side of `bench inference` in its own process (like the served model's): loads the
package, then runs one predict per line read on stdin and answers "done" on stdout.

usage: python -m trainer.bench.inference_worker MODEL_DIR IMAGE_FILE...
Started by trainer.bench.inference.measure_inference with the server's environment (threads).
"""
from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    import mlflow.pyfunc
    import pandas as pd
    model = mlflow.pyfunc.load_model(sys.argv[1])
    frame = pd.DataFrame({"image": [Path(p).read_bytes() for p in sys.argv[2:]]})
    print("ready", flush=True)
    for _ in sys.stdin:
        model.predict(frame)
        print("done", flush=True)


if __name__ == "__main__":
    main()
