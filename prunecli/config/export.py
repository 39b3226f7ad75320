"""Options of ``prunecli export``: the checkpoint's model as a TorchScript or ONNX file, checked."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from prunecli.config._base import MAX_BATCH, PANEL_OUT, PANEL_RUN, StageConfig, allow_nonfinite_option, option, overwrite_option
from prunecli.errors import OptionError


class ExportFormat(str, enum.Enum):
    torchscript = "torchscript"  # torch.jit.trace; loads with torch.jit.load, in Python or C++ (libtorch)
    onnx = "onnx"  # torch.onnx.export (the TorchScript-based exporter: needs onnx, not onnxscript)


# the file name a format is usually given; a default output gets it, a contradicting one is refused
SUFFIX = {ExportFormat.torchscript: ".pt", ExportFormat.onnx: ".onnx"}


def format_for(output: Optional[str]) -> ExportFormat:
    """The format an output name implies: ``.onnx`` is ONNX, anything else TorchScript."""
    return ExportFormat.onnx if output is not None and str(output).lower().endswith(".onnx") else ExportFormat.torchscript


@dataclass(kw_only=True)
class ExportConfig(StageConfig):
    """``prunecli export``: write the model with BatchNorm folded, check it against the checkpoint."""

    command = "export"

    # None: from --output's suffix (.onnx -> onnx), so `-o model.onnx` alone does what it says
    format: Optional[ExportFormat] = option(
        None, help="torchscript or onnx (default: onnx for an --output ending in .onnx, else torchscript).", panel=PANEL_OUT, flags=("-f",)
    )
    output: Optional[str] = option(
        None,
        help="File to write (default: beside the checkpoint, <stem>.torchscript.pt or <stem>.onnx); its path is the only thing printed on stdout.",
        panel=PANEL_OUT,
        flags=("-o",),
        path=True,
    )
    # folded is what inference wants (one layer fewer per conv + BatchNorm pair); --no-fold-bn
    # exports the layers as they are, e.g. to measure what folding gains
    fold_bn: bool = option(True, help="Fold every BatchNorm that directly follows a conv into it.", panel=PANEL_OUT)
    # None: the exporter's default opset (18 with torch 2.14's TorchScript-based exporter)
    # the TorchScript-based exporter of torch 2.x rejects opsets outside 7..23 (torch.onnx._constants);
    # a rejected one made it print the whole traced graph on stdout from C++
    opset: Optional[int] = option(None, help="ONNX opset version (default: the exporter's).", panel=PANEL_OUT, min=7, max=23)
    latency: bool = option(
        False, help="Also time the checkpoint's eager model against the exported file in its runtime, interleaved.", panel=PANEL_RUN
    )
    # 32: as compress measures (a CPU measurement of a small CNN within seconds)
    batch_size: int = option(32, help="Batch size of the latency measurement.", panel=PANEL_RUN, flags=("-b",), min=1, max=MAX_BATCH)
    repeats: int = option(15, help="Timed batches per model for latency.", panel=PANEL_RUN, min=1)
    # None: PyTorch's own (all cores); 1 gives steady numbers on a shared machine
    threads: Optional[int] = option(
        None, help="Threads while timing latency, in every runtime (default: each runtime's own; 1 is steadier on a shared machine).", panel=PANEL_RUN, min=1, max=1024
    )
    json: bool = option(False, help="Print one JSON object on stdout instead of the report.", panel=PANEL_OUT, negatable=False)
    overwrite: bool = overwrite_option()
    allow_nonfinite: bool = allow_nonfinite_option()

    def validate(self) -> None:
        super().validate()
        if self.opset is not None and self.format is not None and self.format is not ExportFormat.onnx:
            raise OptionError("{opset} is an ONNX setting: it needs {format} onnx")

    def resolved_format(self) -> ExportFormat:
        """The format to write: ``format``, or the one ``output``'s suffix implies."""
        fmt = self.format or format_for(self.output)
        if self.output is not None and fmt is ExportFormat.torchscript and format_for(self.output) is ExportFormat.onnx:
            raise OptionError(f"{{output}} {self.output}: an .onnx name for a TorchScript file; pass {{format}} onnx or name it .pt")
        if self.output is not None and fmt is ExportFormat.onnx and str(self.output).lower().endswith((".pt", ".pth")):
            # a .pt name reads as a checkpoint or TorchScript file: every prunecli command would then misread it
            raise OptionError(f"{{output}} {self.output}: a .pt name for an ONNX file; name it .onnx")
        if self.opset is not None and fmt is not ExportFormat.onnx:
            raise OptionError("{opset} is an ONNX setting: it needs {format} onnx (or an {output} ending in .onnx)")
        return fmt
