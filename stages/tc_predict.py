"""Tag texts with the exported tagger and print the entities found: `python -m stages.tc_predict "text" ...`, or
lines on stdin. Words are split at white space (punctuation stays on its word, as in most CoNLL data)."""
import argparse
import sys

from transfer.tasks import token_classification as tc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", help="texts to tag; none: one per line on stdin")
    parser.add_argument("--model", default="models/tc_exported", help="a folder tc_export wrote")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    model, tokenizer = tc.load_trained(args.model, None, None)
    sentences = [(text.split(), None) for text in texts]
    for text, (tokens, _), tags in zip(texts, sentences, tc.predict_tags(model, tokenizer, sentences,
                                                                           args.max_length)):
        found = tc.entities(tokens, tags)
        print(f"{text}\n  " + ("; ".join(f"{kind}: {words}" for kind, words in found) or "(no entities)"))


if __name__ == "__main__":
    main()
