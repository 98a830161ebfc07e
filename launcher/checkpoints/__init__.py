"""A run's checkpoints: one store (store.py) owns save, resume, the engine a resume needs,
verification, pruning, inspect and convert. docs/checkpoints.md describes the format and the rules.

| module | what it is |
| --- | --- |
| `store.py` | `CheckpointStore`: the one object a training rank and the offline tools use |
| `tags.py` | tag names, the tag folders of a checkpoint directory, the `latest` and `trusted` pointers |
| `manifest.py` | `Manifest`: the one record per tag (written last); reading tags of earlier releases |
| `digest.py` | SHA-256 of every file, computed while it is written, checked when it is read |
| `verify.py` | choosing the newest tag that verifies, collectively; the lines saying what was passed over |
| `checks.py` | what a resume checks against the run: model shapes, global batch, layout and engine |
| `canonical.py` | the layout-free state (fp32 weights, Adam moments) through DeepSpeed's accessors |
| `save.py` | the state copied in the loop, written beside it, the manifest once every rank finished |
| `trust.py` | healthy steps after a tag, the `trusted` pointer, and the pruning rule |
| `space.py` | a tag's size (preflight), sizes a person reads, a full disk named |
| `comm.py` | the collectives the store needs, or their one-process equivalents |
| `tools.py` | offline: inspect (`--verify`), convert, export-hf, `plan --from-checkpoint`'s source |

Importing the package loads neither torch nor DeepSpeed.
"""
