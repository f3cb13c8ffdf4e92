#!/usr/bin/env python3
"""Writes the seed corpus of the `srmp` fuzz target (tests/fuzz/corpus/srmp/).

Provenance: the requests of [MC-MQSRM] section 4 (Protocol Examples: 4.1 simple message, 4.2 with
the MSMQ element, 4.3 receipt requests and the delivery and commitment receipts, 4.4 the stream
sample and its stream receipts, 4.5 PGM), read from the Markdown rendering of the specification
in the project's shared material (`shared/spec/MC-MQSRM.md`), plus a few hostile seeds made here
(entity expansion, external entities, a boundary that never ends). The rendering puts an empty
line between the lines of each example; headers are joined back with CRLF and end with an empty
line as MIME requires, content lines are joined as the examples' Content-Length counts them
(markup directly, other lines with a space). Content-Length values are the spec's own (they count line
breaks the examples lack), so the parser's boundary-wins rule is exercised as Windows' bytes
exercise it.

A seed is the request's Content-Type, a line feed, then the request body: the form the fuzz
target and tests/fuzz_corpus.rs read. Run: python3 tests/fuzz/make_srmp_seeds.py SPEC_MD
"""
import os
import re
import sys

HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9-]*: ")
PROSE = ("The following", "HTTP/1.1", "<a id=", "#", "POST ", "For brevity")


def requests(lines):
    """(section, content type, body lines) of every POST in section 4."""
    out, section, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^## (4\.\d+) ", line)
        if m:
            section = m.group(1)
        if section and line.startswith("POST "):
            i += 1
            headers = []
            while i < len(lines) and not lines[i].startswith(("--", "<")):
                if HEADER.match(lines[i]) or not headers:
                    headers.append(lines[i])
                else:  # a header continued on the next line (type=text/xml)
                    headers[-1] += " " + lines[i]
                i += 1
            ct = next(h.split(": ", 1)[1] for h in headers if h.lower().startswith("content-type"))
            body = []
            while i < len(lines) and not lines[i].startswith(PROSE):
                body.append(lines[i])
                i += 1
            out.append((section, ct, body))
            continue
        i += 1
    return out


def join(lines):
    """Content lines joined back as one text: markup lines meet directly, as in the examples'
    Content-Length counts; a line that continues a tag or text is joined with a space."""
    out = ""
    for line in lines:
        if out and not (out.endswith(">") and line.startswith("<")):
            out += " "
        out += line
    return out


def rebuild(ct, body):
    m = re.search(r'boundary="([^"]+)"', ct)
    if not m:
        return join(body).encode()
    delim = "--" + m.group(1)
    out, state, content = [], "preamble", []
    for line in body:
        if state in ("preamble", "part") and line.startswith(delim):
            out.append(line + "\r\n")
            state = "headers"
            continue
        if state == "headers":
            if HEADER.match(line):
                out.append(line + "\r\n")
                continue
            out.append("\r\n")
            state = "content"
        content.append(line)
        if delim in line:
            out.append(join(content))
            content = []
            if line.rstrip().endswith(delim + "--"):
                break
            out.append("\r\n")
            state = "headers"
    out.append(join(content))
    return "".join(out).encode()


HOSTILE_ENVELOPE = (
    '<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Header>'
    '<path xmlns="http://schemas.xmlsoap.org/rp/"><action>MSMQ:{action}</action>'
    "<to>http://localhost/msmq/private$/q</to>"
    "<id>uuid:1@00000000-0000-0000-0000-000000000000</id></path></se:Header><se:Body/></se:Envelope>"
)


def hostile():
    laughs = '<!DOCTYPE se:Envelope [<!ENTITY lol "lol">' + "".join(
        '<!ENTITY lol%d "%s">' % (i, ("&lol%s;" % (i - 1 if i > 1 else "")) * 10) for i in range(1, 10)
    ) + "]>"
    ct = "multipart/related; boundary=b; type=text/xml"
    part = lambda env: ("--b\r\nContent-Type: text/xml\r\n\r\n" + env +
                        "\r\n--b\r\nContent-Id: body@1\r\n\r\nbody\r\n--b--\r\n")
    return {
        "hostile-billion-laughs": (ct, part(laughs + HOSTILE_ENVELOPE.format(action="&lol9;"))),
        "hostile-external-entity": (ct, part('<!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                                             + HOSTILE_ENVELOPE.format(action="&x;"))),
        "hostile-boundary-never-ends": (ct, "--b\r\nContent-Type: text/xml\r\n\r\n"
                                        + HOSTILE_ENVELOPE.format(action="open")),
        "hostile-stream-message": (ct, part(HOSTILE_ENVELOPE.format(action="s").replace(
            "</se:Header>", "<Stream><streamId>uid:00000000-0000-0000-0000-000000000001\\18446744073709551615"
            "</streamId><current>4294967295</current><previous>0</previous></Stream></se:Header>"))),
    }


def main():
    spec = open(sys.argv[1], encoding="utf-8").read().splitlines()
    lines = [l for l in spec if l.strip()]
    start = next(i for i, l in enumerate(lines) if l.startswith("# 4 Protocol Examples"))
    end = next(i for i, l in enumerate(lines) if i > start and re.match(r"^# 5 ", l))
    outdir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "srmp")
    os.makedirs(outdir, exist_ok=True)
    count = {}
    for section, ct, body in requests(lines[start:end]):
        count[section] = count.get(section, 0) + 1
        name = "seed-mc-mqsrm-%s-%d.bin" % (section, count[section])
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(ct.encode() + b"\n" + rebuild(ct, body))
    for name, (ct, body) in hostile().items():
        with open(os.path.join(outdir, "seed-%s.bin" % name), "wb") as f:
            f.write(ct.encode() + b"\n" + body.encode())


if __name__ == "__main__":
    main()
