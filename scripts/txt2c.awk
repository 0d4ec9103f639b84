# docs/cli.txt -> a C string: `bulwark help` prints the text the man page is made from.
# Usage: awk -f scripts/txt2c.awk docs/cli.txt > help.c
BEGIN {
    print "/* Generated from docs/cli.txt by scripts/txt2c.awk; edit that file instead. */"
    print "const char bulwark_help_text[] ="
}
{
    line = $0
    gsub(/\\/, "\\\\", line)
    gsub(/"/, "\\\"", line)
    printf "    \"%s\\n\"\n", line
}
END { print "    \"\";" }
