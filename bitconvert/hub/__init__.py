"""The Hugging Face Hub, in three parts that depend on each other in one direction only.

- :mod:`bitconvert.secrets`: takes the Hub token (and token-shaped text) out of anything shown or
  written. Imports nothing else of the project, so provenance and the model card can use it.
- :mod:`bitconvert.hub.source`: ``hf://ORG/NAME[@REV][/PATH]`` resolved to a local snapshot. Readers
  use it (through ``formats.open_checkpoint``), so it imports nothing from ``bitconvert.formats``.
- :mod:`bitconvert.publish.upload`: the upload plan (verify, list, hash, model card) and the single
  commit. It sits above the formats and may import them.

:mod:`bitconvert.hub.errors` turns what ``huggingface_hub`` raises into one token-free line.

All traffic goes through ``huggingface_hub``, which also decides the endpoint (``HF_ENDPOINT``), the
cache (``HF_HOME`` / ``HF_HUB_CACHE``), the token (``HF_TOKEN`` or the saved token file) and offline
mode (``HF_HUB_OFFLINE``). bitconvert never reads, prints or stores the token itself; the only thing
it does with it is remove it from any text it shows or writes. ``huggingface_hub`` is imported inside
the functions that talk to the Hub, so local-only commands do not pay for the import.

This ``__init__`` imports none of its modules: importing ``bitconvert.hub.source`` must not pull in
the upload half (and with it the formats).
"""
