"""TL1/TL2 tensors in a GGUF file: which kernel configuration they are read with.

A TL tensor's bytes are ordered by the tile the build's kernel configuration gives its shape, and
bitnet.cpp's converter writes no record of it. bitconvert records the tiles it used
(``bitconvert.kernel_config``); a file without that record is read with the configuration the
caller names (the reader's ``kernels`` argument, or :data:`.kernel_config.ASSUMED`, which the CLI's
``--kernel-config`` / ``--kernel-preset`` before the command set), else refused with one line.
"""

from __future__ import annotations

from ...errors import CheckpointError
from . import kernel_config, tl_layouts
from .kernel_config import KernelConfig, Tile
from .parser import GGUFFile


def kernels_for(f: GGUFFile, given: KernelConfig | None, notes: list[str]) -> tuple[KernelConfig, str] | None:
    """The configuration ``f``'s TL tensors are read with and how it was chosen, in words (``inspect``
    shows it); None for a file without TL tensors."""
    tl = [t for t in f.tensors.values() if t.ggml.tiled]
    if not tl:
        return None
    if f.scale_entries:
        notes.append(f"{len(f.scale_entries)} `<name>_scale` tensor entries read as the TL scale slots they "
                     "describe (upstream gguf-py's header; bitnet.cpp's lists none)")  # fmt: skip
    text = f.get(kernel_config.RECORD_KEY)
    recorded = kernel_config.from_record(text, f.path) if text is not None else None
    if given is None:
        choice = kernel_config.ASSUMED.get()
        given = choice.resolve(tl[0].type_name.lower()) if choice else None
    if given is not None:
        if recorded is not None and any(given.tile(*t.shape) != recorded.tile(*t.shape) for t in tl):
            notes.append(f"TL tensors read with the kernel configuration given ({given.name}), whose tiles differ "
                         f"from the ones the file records ({recorded.name})")  # fmt: skip
        return given, f"{given.name} (given when reading)"
    if recorded is None:
        kinds = " and ".join(sorted({t.type_name for t in tl}))
        problem = (f"{kinds} tensors, and the file records no kernel configuration (bitnet.cpp's converter "
                   "records none): name the build's, as bitconvert --kernel-config FILE (its "
                   "include/kernel_config.ini) or --kernel-preset NAME before the command")  # fmt: skip
        raise CheckpointError(f.path, problem)
    return recorded, f"{recorded.name} (recorded in the file)"


def tile_for(f: GGUFFile, gname: str, kernels: tuple[KernelConfig, str] | None) -> Tile | None:
    """The tile TL tensor ``gname`` is read with (None for other types); refused where the
    configuration has none for its shape, or one its type cannot pack."""
    t = f.tensors.get(gname)
    if t is None or not t.ggml.tiled or kernels is None:
        return None
    config = kernels[0]
    tile = config.tile(*t.shape)
    if tile is None:
        dims = "×".join(map(str, t.shape))
        raise CheckpointError(f.path, f"weight shape {dims} has no kernel in {config.name} ({config.shapes()})", gname)
    problem = tl_layouts.tile_problem(t.type_name.lower(), tile)
    if problem:
        raise CheckpointError(f.path, f"{config.name}, {tile.describe()}: not a {t.type_name} tile: {problem}", gname)
    return tile
