"""Stage 1 of the child detector: where are the faces? MTCNN from facenet-pytorch (its weights ship in the wheel).

Settings chosen on the course images (benchmarks/bench_build.py measures them): a coarser image pyramid
(`factor=0.6`) and stricter proposal thresholds cut MTCNN from ~210 ms to ~70 ms per 500 px photo on this CPU
while keeping 24 of 26 confident faces. Images are shrunk to `max_side` first, so a 40 MP photo costs what a
1 MP one does; boxes come back in the coordinates of the image that was passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from retrieval.errors import DetectorUnavailableError

#: MTCNN proposal thresholds (P-Net, R-Net, O-Net) and pyramid step.
THRESHOLDS = (0.7, 0.8, 0.9)
FACTOR = 0.6
MIN_FACE = 20
#: Faces below this O-Net probability are dropped (MTCNN's own last stage already needs 0.9).
MIN_FACE_PROB = 0.9
MAX_SIDE = 1024
#: How the build decodes a photo for the detector: JPEG draft while the shorter side stays >= this. MTCNN works at
#: MAX_SIDE anyway, so a 12 MP phone photo decodes at half scale (4000x3000: 276 -> 37 ms, face pass 330 -> 181 ms);
#: photos under 2048 px on the shorter side decode in full as before.
DECODE_SHORT_SIDE = MAX_SIDE
#: MTCNN's smallest network input; smaller images have no face by construction.
_MIN_INPUT = 12


@dataclass(frozen=True)
class Face:
    """A face box (x0, y0, x1, y1) in pixels of the upright image, with MTCNN's face probability."""

    box: tuple[float, float, float, float]
    prob: float


class FaceFinder:
    """MTCNN wrapper: PIL RGB image -> faces. Raises DetectorUnavailableError if facenet-pytorch cannot load."""

    id = f"mtcnn-f{FACTOR}-t{'-'.join(map(str, THRESHOLDS))}-m{MIN_FACE}-s{MAX_SIDE}"

    def __init__(self, channels_last: bool = True) -> None:
        """`channels_last`: run MTCNN's three nets in channels-last memory (same faces up to float rounding;
        torch's max-pool is 4-30x faster in that layout on CPU, the whole detector 1.66x: `_to_channels_last`)."""
        try:
            from facenet_pytorch import MTCNN
        except Exception as exc:  # ImportError, or a broken install failing inside the import
            raise DetectorUnavailableError(
                f"the face detector cannot load ({type(exc).__name__}: {exc}); install it with "
                "`pip install --no-deps facenet-pytorch==2.6.0` (make install does this)"
            ) from None
        self._mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=MIN_FACE, factor=FACTOR,
                            thresholds=list(THRESHOLDS), post_process=False)
        if channels_last:
            for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
                _to_channels_last(net)

    def find(self, image: Any) -> list[Face]:
        """Faces in one RGB PIL image, most confident first. Never raises on odd sizes or modes."""
        import torch

        w, h = image.size
        if min(w, h) < _MIN_INPUT:
            return []
        scale = min(1.0, MAX_SIDE / max(w, h))
        small = image if scale == 1.0 else image.resize((max(1, round(w * scale)), max(1, round(h * scale))))
        if min(small.size) < _MIN_INPUT:
            return []
        if small.mode != "RGB":
            small = small.convert("RGB")
        with torch.inference_mode():
            boxes, probs = self._mtcnn.detect(small)
        if boxes is None:
            return []
        faces = [Face(tuple(float(min(max(v / scale, 0.0), lim)) for v, lim in zip(b, (w, h, w, h))), float(p))
                 for b, p in zip(boxes, probs) if p is not None and p >= MIN_FACE_PROB]
        return sorted((f for f in faces if f.box[2] > f.box[0] and f.box[3] > f.box[1]), key=lambda f: -f.prob)


def _to_channels_last(net: Any) -> None:
    """In place: conv weights in channels-last memory, and every max-pool fed a channels-last tensor (MTCNN builds
    its inputs channels-first; the first pool converts, later layers keep the layout). Measured on 60 course
    photos, 1 thread: 62 -> 37 ms per photo, the same faces (box and probability differences <= 3e-5)."""
    import torch

    class ChannelsLastPool(torch.nn.Module):
        def __init__(self, pool: Any) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, x: Any) -> Any:
            return self.pool(x.contiguous(memory_format=torch.channels_last))

    for name, module in list(net.named_children()):
        if isinstance(module, torch.nn.MaxPool2d):
            setattr(net, name, ChannelsLastPool(module))
    net.to(memory_format=torch.channels_last)


def face_crop(image: Any, face: Face, context: float = 1.6) -> Any:
    """Square crop `context` times the face's longer side, centred on it (padded with black past the edges)."""
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0) * context
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return image.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))


def crops(image: Any, faces: Sequence[Face], context: float = 1.6) -> list[Any]:
    return [face_crop(image, f, context) for f in faces]
