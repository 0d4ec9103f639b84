# docs/cli.txt -> roff for man(7): the man page bulwark.1 from the text `bulwark help` prints.
# Usage: awk -f scripts/txt2man.awk docs/cli.txt > bulwark.1
#
# The text's layout is its markup:
#   SECTION             a line of capitals          -> .SH
#   "  term rest"       two spaces, then a term     -> .TP, the term's first word bold
#   "      text"        six spaces: the term's description
#   "    text"          four spaces: a paragraph (a blank line before it starts a new one)
# In SYNOPSIS every line stays a line of its own.
# Backslash -> \e, hyphen -> \-, a leading . or ' guarded; character by character, as
# gsub's backslash handling differs between awks.
function esc(s,    out, i, c) {
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\")
            out = out "\\e"
        else if (c == "-")
            out = out "\\-"
        else
            out = out c
    }
    if (out ~ /^[.']/)
        out = "\\&" out
    return out
}
BEGIN {
    print ".\\\" Generated from docs/cli.txt by scripts/txt2man.awk; edit that file instead."
    print ".TH BULWARK 1 \"\" \"bulwark\" \"User Commands\""
}
/^[A-Z][A-Z ]*$/ { print ".SH " $0; section = $0; blank = 0; next }
/^$/ { blank = 1; next }
/^  [^ ]/ {
    t = substr($0, 3)
    n = index(t, " ")
    word = n ? substr(t, 1, n - 1) : t
    rest = n ? substr(t, n) : ""
    print ".TP"
    print "\\fB" esc(word) "\\fR" esc(rest)
    blank = 0
    next
}
{
    t = $0
    sub(/^ +/, "", t)
    if (blank && $0 ~ /^    [^ ]/)
        print ".PP"
    blank = 0
    print esc(t)
    if (section == "SYNOPSIS")
        print ".br"
}
