"""RFC 8785 canonical JSON: the RFC's examples, its number table, the reference test data."""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
import subprocess

import pytest

from agent.custody.jcs import canonicalize, number_to_string


def _double(bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(bits))[0]


# RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_appendix_b_numbers(bits: str, expected: str) -> None:
    assert canonicalize(_double(bits)) == expected.encode()
    assert canonicalize([_double(bits)]) == f"[{expected}]".encode()


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_appendix_b_non_finite_numbers_are_refused(bits: str) -> None:
    value = _double(bits)
    with pytest.raises(ValueError, match="not finite") as err:
        canonicalize({"n": value})
    assert repr(value) in str(err.value)


@pytest.mark.parametrize(("value", "expected"), [
    (1e30, "1e+30"), (4.50, "4.5"), (2e-3, "0.002"), (1e-27, "1e-27"), (1e-7, "1e-7"),
    (1e-6, "0.000001"), (-0.0, "0"), (0.0, "0"), (333333333.33333329, "333333333.3333333"),
    (56.0, "56"), (1e21, "1e+21"), (1e20, "100000000000000000000"), (123e-20, "1.23e-18"),
    (-1.5, "-1.5"), (0.1, "0.1"), (5e-7, "5e-7"), (1.25e-6, "0.00000125"),
])
def test_number_examples(value: float, expected: str) -> None:
    assert number_to_string(value) == expected


def test_integers_up_to_two_to_the_53_are_exact() -> None:
    assert canonicalize([0, -1, 2**53, -(2**53), 9007199254740991]) == \
        b"[0,-1,9007199254740992,-9007199254740992,9007199254740991]"


@pytest.mark.parametrize("value", [2**53 + 1, -(2**53) - 1, 2**64])
def test_integers_beyond_two_to_the_53_are_refused_by_value(value: int) -> None:
    with pytest.raises(ValueError, match=str(value)):
        canonicalize({"size": value})


def test_literals_and_bools_are_not_numbers() -> None:
    assert canonicalize([None, True, False, 1, 0]) == b"[null,true,false,1,0]"


RFC_SAMPLE_INPUT = r'''{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}'''
RFC_SAMPLE_OUTPUT_HEX = """
7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72 75 65 2c 66 61 6c 73 65 5d 2c 22 6e
75 6d 62 65 72 73 22 3a 5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31 65 2b 33 30
2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37 5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24
5c 75 30 30 30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d
"""


def test_rfc_sample_exact_bytes() -> None:
    # RFC 8785 section 3.2.2 (sorting, numbers, escapes, UTF-8) and its output in hex.
    assert canonicalize(json.loads(RFC_SAMPLE_INPUT)) == bytes.fromhex(RFC_SAMPLE_OUTPUT_HEX)


# The reference test data (cyberphone/json-canonicalization testdata), as
# Python values and the exact canonical text.
REFERENCE = [
    ([56, {"d": True, "10": None, "1": []}], '[56,{"1":[],"10":null,"d":true}]'),
    ({"peach": "This sorting order", "p\u00e9ch\u00e9": "is wrong according to French",
      "p\u00eache": "but canonicalization MUST", "sin": "ignore locale"},
     '{"peach":"This sorting order","p\u00e9ch\u00e9":"is wrong according to French",'
     '"p\u00eache":"but canonicalization MUST","sin":"ignore locale"}'),
    ({"1": {"f": {"f": "hi", "F": 5}, "\n": 56.0}, "10": {}, "": "empty", "a": {},
      "111": [{"e": "yes", "E": "no"}], "A": {}},
     '{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{"E":"no","e":"yes"}],'
     '"A":{},"a":{}}'),
    ({"Unnormalized Unicode": "A\u030a"}, '{"Unnormalized Unicode":"A\u030a"}'),
    ({"\u20ac": "Euro Sign", "\r": "Carriage Return", "\u000a": "Newline", "1": "One",
      "\u0080": "Control\u007f", "\U0001f602": "Smiley",
      "\u00f6": "Latin Small Letter O With Diaeresis",
      "\ufb33": "Hebrew Letter Dalet With Dagesh", "</script>": "Browser Challenge"},
     '{"\\n":"Newline","\\r":"Carriage Return","1":"One","</script>":"Browser Challenge",'
     '"\u0080":"Control\u007f","\u00f6":"Latin Small Letter O With Diaeresis",'
     '"\u20ac":"Euro Sign","\U0001f602":"Smiley","\ufb33":"Hebrew Letter Dalet With Dagesh"}'),
]


@pytest.mark.parametrize(("value", "expected"), REFERENCE)
def test_reference_test_data(value: object, expected: str) -> None:
    assert canonicalize(value) == expected.encode("utf-8")


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16, which sorts before
    # U+FFFD although its code point is larger.
    out = canonicalize({"\ufffd": 1, "\U0001f600": 2, "z": 3})
    assert out == '{"z":3,"\U0001f600":2,"\ufffd":1}'.encode()


def test_string_escapes_only_what_the_rfc_requires() -> None:
    controls = "".join(chr(c) for c in range(0x20))
    expected = ('"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007'
                '\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f'
                '\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017'
                '\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f"')
    assert canonicalize(controls) == expected.encode()
    assert canonicalize('"\\/\u007f\u2028\u00e9\u4e2d') == \
        '"\\"\\\\/\u007f\u2028\u00e9\u4e2d"'.encode()
    assert canonicalize("\u4e2d\u6587") == b'"\xe4\xb8\xad\xe6\x96\x87"'


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        canonicalize({"name": "bad\ud800"})
    with pytest.raises(ValueError, match="surrogate"):
        canonicalize({"\udc00": 1, "a": 2})


def test_unsupported_types_are_named() -> None:
    with pytest.raises(TypeError, match="bytes"):
        canonicalize({"a": b"raw"})
    with pytest.raises(TypeError, match="not a string"):
        canonicalize({1: "x"})


def test_tuples_are_arrays_and_nesting_is_recursive() -> None:
    assert canonicalize({"b": (1, {"y": 2, "x": [3]}), "a": []}) == \
        b'{"a":[],"b":[1,{"x":[3],"y":2}]}'


def test_output_parses_back_to_the_same_value() -> None:
    manifest = {"schema": "bwc.manifest/v1", "file": {"size": 123456789, "name": "\u6587.mp4"},
                "media": {"fps": 29.97, "duration_s": 12.5, "issues": []}, "case_id": None}
    assert json.loads(canonicalize(manifest)) == manifest
    assert canonicalize(json.loads(canonicalize(manifest))) == canonicalize(manifest)


@pytest.mark.skipif(shutil.which("node") is None, reason="node (a V8 reference) not installed")
def test_numbers_and_strings_match_v8() -> None:
    # RFC 8785 names V8 as the reference serializer: compare with it directly
    # on random bit patterns (every exponent range) and on decimal-looking values.
    rng = random.Random(8785)
    values: list[float] = []
    while len(values) < 3000:
        v = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0]
        if math.isfinite(v):
            values.append(v)
    values += [round(rng.uniform(-1e4, 1e4), rng.randint(0, 9)) for _ in range(1000)]
    values += [rng.random() * 10.0 ** rng.randint(-25, 25) for _ in range(1000)]
    strings = ["".join(chr(rng.choice([rng.randint(0, 0x7f), rng.randint(0x80, 0xd7ff),
                                       rng.randint(0x10000, 0x10ffff)])) for _ in range(20))
               for _ in range(300)]
    script = ("const d=JSON.parse(require('fs').readFileSync(0,'utf8'));const v=new DataView("
              "new ArrayBuffer(8));const o=d.n.map(h=>{v.setBigUint64(0,BigInt('0x'+h));"
              "return JSON.stringify(v.getFloat64(0))});"
              "process.stdout.write(JSON.stringify({n:o,s:d.s.map(x=>JSON.stringify(x))}))")
    payload = json.dumps({"n": [struct.pack(">d", v).hex() for v in values], "s": strings})
    result = subprocess.run(["node", "-e", script], input=payload, capture_output=True,
                            text=True, check=True, timeout=60)
    v8 = json.loads(result.stdout)
    ours = [number_to_string(v) for v in values]
    mismatches = [(v, a, b) for v, a, b in zip(values, ours, v8["n"], strict=True) if a != b]
    assert mismatches == []
    assert [canonicalize(s).decode() for s in strings] == v8["s"]


def test_refusals_name_the_value_and_say_why_in_full() -> None:
    """Rule: a value canonical JSON cannot carry is refused with a message naming it and why.

    The message is what an auditor or a platform engineer reads when a manifest
    cannot be sealed or checked, so it is pinned word for word.
    """
    with pytest.raises(ValueError) as err:
        canonicalize({"a": "x\ud800y"})
    assert str(err.value) == ("string contains '\\ud800' (a lone surrogate), which is not "
                              "valid Unicode and cannot be canonicalized")
    with pytest.raises(ValueError) as err:
        canonicalize({"k\udfffey": 1})
    assert str(err.value) == ("object member name 'k\\udfffey' contains a lone surrogate, "
                              "which is not valid Unicode and cannot be canonicalized")
    with pytest.raises(ValueError) as err:
        canonicalize(-(2**53) - 1)
    assert str(err.value) == (f"integer {-(2**53) - 1} is beyond +/-2**53 and cannot be "
                              "represented exactly in canonical JSON (RFC 8785 numbers are "
                              "IEEE 754 doubles)")
    with pytest.raises(TypeError) as type_err:
        canonicalize({7: "seven"})
    assert str(type_err.value) == "object member name 7 is a int, not a string"
