"""TensorBoard event files (written with the tensorboard package alone) and a JSONL log."""

import json
import os
import pathlib
import time

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
  """`write(step, {'name': value})` -> DIR/tb event files and DIR/metrics.jsonl."""

  def __init__(self, workdir: str | os.PathLike, subdir: str = "tb", jsonl: bool = True):
    workdir = pathlib.Path(workdir)
    (workdir / subdir).mkdir(parents=True, exist_ok=True)
    self._tb = EventFileWriter(str(workdir / subdir))
    self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1) if jsonl else None

  def write(self, step: int, scalars: dict) -> None:
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                       summary=summary_pb2.Summary(value=values)))
    if self._jsonl:
      self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")

  def write_text(self, step: int, tag: str, text: str) -> None:
    """A Markdown text summary (TensorBoard's Text tab), e.g. sample replies."""
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode("utf-8")],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto())
    value = summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value])))
    self._tb.flush()

  def flush(self) -> None:
    self._tb.flush()
    if self._jsonl:
      self._jsonl.flush()

  def close(self) -> None:
    self._tb.close()
    if self._jsonl:
      self._jsonl.close()


def read_scalars(tb_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """All scalars of the event files in `tb_dir`: {tag: [(step, value)]} (for tests and plots)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # readers only (tests, plots)
  acc = EventAccumulator(str(tb_dir))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
