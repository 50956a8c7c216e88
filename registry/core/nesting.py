"""A text pre-scan that bounds how deeply a YAML document nests, before any YAML parser sees it.

Why: libyaml (and, since PyYAML 6.0.4, PyYAML itself) refuses very deep input with messages of its own,
and older builds recursed in C until the process crashed. kubeport promises one refusal in its own words
("nested more than 32 levels deep", with a line and column) whatever the installed parser does, so this
scan runs on the raw text first and the parser only ever receives documents it can handle.

What it counts, in one pass over the characters (no recursion, no regex backtracking, O(len(text))):

* **Flow collections** (``[`` and ``{``): inside a flow collection every bracket outside a quoted
  scalar is structure (plain scalars there cannot contain ``[]{},``). In block context a bracket opens a
  collection only where a node starts: after the indentation, after ``- ``, ``? `` or ``: ``. So
  ``name: ^foo[a-z]$`` counts nothing, ``a: [[x]]`` counts two.
* **Block collections**: the indentation of each content line against a stack of the indentations above
  it, plus compact sequence entries on one line (``- - - x``). This estimate never exceeds the real
  depth; for the rare indentless sequence it can be lower by one level per mapping level, which is why the
  exact count still happens on the parser's events (``validation._precheck_events``) — that pass runs with
  inputs this scan already bounded, so it always gets there before the parser's own limit.

Skipped: comments (``#`` at a line start or after a blank), single- and double-quoted scalars (which may
span lines), and the bodies of block scalars (``|`` / ``>``), whose text is data, not structure.

Invariant: :func:`nesting_error` returns ``None`` for every document the event pass would accept, and a
message naming the line and column of the first collection past the limit otherwise (for flow
collections and block indentation; the event pass catches the rest).
"""

from __future__ import annotations

_OPENERS = "[{"
_CLOSERS = "]}"


def nesting_error(text: str, limit: int) -> str | None:
    """``"line L, column C: nested more than LIMIT levels deep"`` or ``None`` when the text stays within."""
    if depth_bound(text) <= limit:
        return None  # cannot nest that deep: skip the character scan (most documents; see depth_bound)
    scanner = _Scanner(text, limit)
    return scanner.run()


def depth_bound(text: str) -> int:
    """An upper bound on how deeply ``text`` can nest, from character counts alone (C speed, no parsing).

    Why it holds: a flow collection opens at a ``[`` or ``{``. A block collection opens where a node starts:
    at a line's indentation (at most one per line), or on the same line after a ``- `` or ``? `` indicator,
    or after the ``: `` of an explicit (``?``) key. So the depth is at most the number of lines plus the
    number of those characters, each ``?`` counted twice (once for itself, once for its ``:``). Every such
    character counts, in scalars too, and every YAML line break (LF, CR, NEL, LS, PS) starts a line: the
    bound only ever errs high, and a document it cannot clear goes through the exact scan."""
    lines = 1 + sum(text.count(brk) for brk in ("\n", "\r", "\x85", "\u2028", "\u2029"))
    indicators = text.count("-") + 2 * text.count("?") + text.count("[") + text.count("{")
    return lines + indicators


class _Scanner:
    """One forward pass; ``pos`` only moves forward, so the scan is linear in the text."""

    def __init__(self, text: str, limit: int) -> None:
        self.text = text
        self.limit = limit
        self.pos = 0
        self.flow = 0  # open flow collections
        self.flow_base = 0  # block depth where the outermost open flow collection started
        # Block context: the indentation of each enclosing content line, whether that line opened a block
        # collection (``key:`` or ``- ``; a plain or flow scalar on its own line does not), and how many did.
        self.indents: list[int] = []
        self.opened: list[bool] = []
        self.open_count = 0
        self.line = 0
        self.line_start = 0

    def error(self, at: int) -> str:
        return f"line {self.line + 1}, column {at - self.line_start + 1}: nested more than {self.limit} levels deep"

    def run(self) -> str | None:
        text = self.text
        n = len(text)
        while self.pos < n:
            message = self._line()
            if message is not None:
                return message
        return None

    # -- one physical line (quoted scalars and flow collections may carry on into the next ones) --------

    def _newline(self, at: int) -> None:
        self.line += 1
        self.line_start = at + 1

    def _line(self) -> str | None:
        text = self.text
        n = len(text)
        start = self.pos
        line_end = self._end_of_line(start)
        indent_end = start
        while indent_end < line_end and text[indent_end] == " ":
            indent_end += 1
        rest = text[indent_end:line_end]
        if not rest.strip() or rest.startswith("#") or (indent_end == start and rest.startswith("%")):
            # Blank lines, comments and directives: nothing nests here.
            self._next_line(line_end)
            return None
        node_start = True
        line_opened = False  # this line's ``key:`` or first ``- `` opened the collection at its indentation
        after_dash = False  # the last block indicator on this line was ``- `` (so ``- k: v`` nests a mapping)
        depth_here = 0
        i = indent_end
        if indent_end == start and rest.startswith(("---", "...")) and rest[3:4] in ("", " ", "\t", "\r"):
            self.indents.clear()  # a new document
            self.opened.clear()
            self.open_count = 0
            i += 3
        elif self.flow > 0:
            depth_here = self.flow_base  # a flow collection carried on from an earlier line
        else:
            indent = indent_end - start
            while self.indents and self.indents[-1] >= indent:
                self.indents.pop()
                self.open_count -= self.opened.pop()
            self.indents.append(indent)
            self.opened.append(False)
            depth_here = self.open_count
        while i < n:
            ch = text[i]
            if ch == "\n":
                self._newline(i)
                self.pos = i + 1
                return None
            if ch in " \t\r":
                i += 1
                continue
            if ch == "#" and (i == indent_end or text[i - 1] in " \t"):
                i = self._end_of_line(i)
                continue
            if ch in "\"'" and (node_start or self.flow > 0):
                i = self._skip_quoted(i)
                node_start = False
                continue
            if self.flow == 0 and node_start and ch in "|>":
                self.pos = self._skip_block_scalar(i, indent_end - start)
                return None
            if ch in _OPENERS and (node_start or self.flow > 0):
                if self.flow == 0:
                    self.flow_base = depth_here
                self.flow += 1
                if depth_here + self.flow > self.limit:
                    return self.error(i)
                node_start = True
                i += 1
                continue
            if ch in _CLOSERS and self.flow > 0:
                self.flow -= 1
                node_start = False
                i += 1
                continue
            if self.flow > 0:
                node_start = ch in ",:?"
                i += 1
                continue
            # Block context.
            if ch in "-?:" and (i + 1 >= n or text[i + 1] in " \t\r\n"):
                if (ch == "-" and node_start) or (ch in "?:" and (after_dash or not line_opened)):
                    # ``- `` opens a sequence (each compact ``- - x`` one more); the first ``key:`` of a line,
                    # or one right after ``- ``, opens a mapping.
                    depth_here += 1
                    if not line_opened and self.indents:
                        self.opened[-1] = True
                        self.open_count += 1
                    line_opened = True
                    if depth_here > self.limit:
                        return self.error(i)
                after_dash = ch == "-"
                node_start = True
                i += 1
                continue
            if ch in "!&*" and node_start:  # a tag or an anchor: the node starts after it
                while i < n and text[i] not in " \t\r\n":
                    i += 1
                continue
            # A plain scalar: up to ": " (then a value may start) or the end of the line.
            node_start = False
            i += 1
        self.pos = n
        return None

    def _next_line(self, line_end: int) -> None:
        if line_end < len(self.text):
            self._newline(line_end)
        self.pos = line_end + 1

    def _end_of_line(self, i: int) -> int:
        end = self.text.find("\n", i)
        return len(self.text) if end < 0 else end

    def _skip_quoted(self, i: int) -> int:
        """Past the closing quote (newlines inside are counted); an unterminated scalar runs to the end."""
        text = self.text
        n = len(text)
        quote = text[i]
        i += 1
        while i < n:
            ch = text[i]
            if ch == "\n":
                self._newline(i)
            elif quote == '"' and ch == "\\":
                i += 2
                continue
            elif ch == quote:
                if quote == "'" and i + 1 < n and text[i + 1] == "'":
                    i += 2
                    continue
                return i + 1
            i += 1
        return n

    def _skip_block_scalar(self, i: int, parent_indent: int) -> int:
        """Past the body of a ``|`` / ``>`` scalar: the lines that are blank or indented deeper than its key."""
        text = self.text
        n = len(text)
        i = self._end_of_line(i)
        while i < n:  # i is at a newline
            self._newline(i)
            j = i + 1
            k = j
            while k < n and text[k] == " ":
                k += 1
            if k < n and text[k] not in "\r\n" and k - j <= parent_indent:
                return j  # a line at or left of the key: the scalar is over
            i = self._end_of_line(k)
        return n
