"""``kshot predict RUN --support FOLDER IMAGES``: label images from a few labelled examples."""

from __future__ import annotations

import argparse

from kshot.cli.common import add_runtime_options, print_json, resolve_device, set_threads


def cmd_predict(args: argparse.Namespace) -> int:
    from kshot.classifier import FewShotClassifier
    from kshot.data.folder import load_folder, load_images

    set_threads(args.threads, args.compile)
    classifier = FewShotClassifier.from_run(args.run_dir, resolve_device(args.device),
                                            allow_overlap=args.allow_overlap)
    size = classifier.learner.item_shape[-1]
    support = load_folder(args.support, size, invert=args.invert)
    queries = load_images(args.images, size, invert=args.invert)
    classifier.fit(support.images, [support.class_names[i] for i in support.labels.tolist()])
    probabilities = classifier.predict_proba(queries)
    for path, row in zip(args.images, probabilities):
        best = int(row.argmax())
        label, probability = str(classifier.classes_[best]), float(row[best])
        if args.json:
            print_json({"image": str(path), "label": label, "probability": round(probability, 4)})
        else:
            print(f"{path}\t{label}\t{probability:.3f}")
    return 0


def add_parser(commands) -> None:
    pr = commands.add_parser("predict", help="classify images given a folder of labelled examples")
    pr.add_argument("run_dir")
    pr.add_argument("--support", required=True, help="folder of class sub-folders")
    pr.add_argument("images", nargs="+", help="query images")
    pr.add_argument("--invert", default="auto", choices=["auto", "yes", "no"],
                    help="invert dark-on-light images (auto: per image)")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--allow-overlap", action="store_true", help="support classes named like "
                    "classes the run trained on (folder:<name>) are refused unless this is given")
    add_runtime_options(pr)
    pr.set_defaults(func=cmd_predict)

