"""``excite weights list`` and ``excite weights download``: thin wrappers over :mod:`excite.files.weights`."""

from __future__ import annotations

import fnmatch
import json

from excite.core.registry import list_models


def cmd_weights_list(args) -> int:
    from excite.files.weights import format_table, list_weights  # torch-free start-up

    entries = [e for e in list_weights() if fnmatch.fnmatchcase(e.model, args.pattern)]
    registered = set(list_models())  # the index: no torch import for a listing
    if args.format == "json":
        print(json.dumps([{**e.__dict__, "registered": e.model in registered} for e in entries], indent=1))
        return 0
    print(format_table(entries, registered=registered))
    print(f"\n{len(entries)} weight files; top-1: the publisher's ImageNet-1k validation figure; sha256 "
          "'(prefix)': the digits in the file name, checked as torch.hub does")
    return 0


def cmd_weights_download(args) -> int:
    from excite.files.weights import download_weights, find_weights  # torch-free start-up

    entry = find_weights(args.model, args.tag if args.tag else True)
    print(download_weights(entry))
    return 0


def register(sub) -> None:
    p = sub.add_parser("weights", help="public pretrained weights: list the table, download a file")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    q = wsub.add_parser("list", help="every weight file with its source, licence, hash and published top-1")
    q.add_argument("--pattern", default="*", help="shell-style filter on model names, e.g. 'resnet*'")
    q.add_argument("--format", choices=("table", "json"), default="table")
    q.set_defaults(func=cmd_weights_list)
    q = wsub.add_parser("download", help="download a model's weights into the cache ($EXCITE_HOME) and print the path")
    q.add_argument("model", help="a registered model name")
    q.add_argument("--tag", default=None, help="which weights (torchvision, torchvision-v2, eca-official, timm); "
                                                "default: the model's first entry")
    q.set_defaults(func=cmd_weights_download)
