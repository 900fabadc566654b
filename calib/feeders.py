"""One calibration sample list, fed to each quantizer in the form it takes.

Samples are `{input name: (1, ...) float32 array}` dicts, as `CalibrationSet.stage_inputs`
returns them for one stage graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

Sample = dict[str, np.ndarray]


def ort_reader(samples: list[Sample]) -> Any:
    """An onnxruntime.quantization `CalibrationDataReader` over the samples (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[Sample] = iter(samples)

        def get_next(self) -> Sample | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(samples)

        def __len__(self) -> int:
            return len(samples)

    return _Reader()


def nncf_dataset(samples: list[Sample]) -> Any:
    """An `nncf.Dataset` whose items are the input dicts an OpenVINO model takes."""
    import nncf

    return nncf.Dataset(samples)


def coreml_sample_data(samples: list[Sample]) -> list[Sample]:
    """coremltools' activation-quantization `sample_data`: a list of input-name dicts."""
    return [{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in s.items()} for s in samples]
