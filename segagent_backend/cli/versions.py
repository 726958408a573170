"""``segagent versions``: list, register, promote or roll back model versions (MODEL_DIR/versions)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from ..registry import Registry, RegistryError
from ..settings import Settings


def register(sub) -> None:
    """``segagent versions``."""
    p = sub.add_parser("versions", help="list, register, promote or roll back model versions (MODEL_DIR/versions)")
    p.add_argument("action", choices=("list", "promote", "rollback", "register"),
                   help="list the versions, promote VERSION, roll back to the previous one, or register PATH")
    p.add_argument("target", nargs="?", help="promote: VERSION; register: PATH of a trained policy folder")
    p.add_argument("--meta", help="register: metadata JSON (base, data, counts, metrics, parent)")
    p.add_argument("--version", help="register: the version name (default: v<N+1>)")
    p.add_argument("--move", action="store_true", help="register: move the folder in instead of copying it")
    p.set_defaults(run=cmd_versions)


#: the weight files of a transformers checkpoint folder (what SEGAGENT_POLICY or a version's model/ holds)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def model_folder_problem(folder: Path) -> Optional[str]:
    """Why ``folder`` holds no loadable policy checkpoint (no config.json, no weights), or None."""
    if not folder.is_dir():
        return "not a folder" if folder.exists() else "no such folder"
    if not (folder / "config.json").is_file():
        return "holds no model: no config.json"
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        return "holds no model: config.json but no weights (*.safetensors, *.bin)"
    return None


def cmd_versions(args: argparse.Namespace) -> int:
    """list | promote VERSION | rollback | register PATH: JSON on standard output."""
    from dataclasses import asdict

    registry = Registry.from_settings(Settings.from_env())
    if args.action == "list":
        current = registry.current()
        print(json.dumps({"current": current.version, "history": list(current.history),
                          "versions": [asdict(m) for m in registry.list_versions()]}, indent=2))
        return 0
    if args.action == "register":
        if not args.target:
            raise RegistryError("register needs the PATH of a trained policy folder")
        try:
            meta = json.loads(args.meta) if args.meta else {}
        except ValueError as exc:
            raise RegistryError(f"--meta is not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise RegistryError("--meta must be a JSON object")
        if args.version:
            meta["version"] = args.version
        problem = model_folder_problem(Path(args.target))
        if problem:
            raise RegistryError(f"{args.target}: {problem}; give the folder a trained policy was saved to "
                                f"(config.json and *.safetensors or pytorch_model*.bin)")
        print(json.dumps(asdict(registry.register(args.target, meta, move=args.move))))
        return 0
    if args.action == "promote":
        if not args.target:
            raise RegistryError("promote needs a VERSION")
        current = registry.promote(args.target)
    else:
        current = registry.rollback()
    print(json.dumps(current.to_json()))
    return 0
