# docs/cli.txt -> a C string: `bulwark help` prints the text the man page is made from.
# Usage: awk -f scripts/txt2c.awk docs/cli.txt > help.c
BEGIN {
    print "/* Generated from docs/cli.txt by scripts/txt2c.awk; edit that file instead. */"
    print "const char bulwark_help_text[] ="
}
# Character by character: gsub's handling of backslashes in the replacement differs
# between awks (mawk, gawk, busybox).
function cquote(s,    out, i, c) {
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\" || c == "\"")
            out = out "\\" c
        else
            out = out c
    }
    return out
}
{ printf "    \"%s\\n\"\n", cquote($0) }
END { print "    \"\";" }
