// A hand-written rule, as an example of your own: a small shell script that
// downloads a file, makes it executable and runs it, the way droppers fetch
// their payload. ClamAV's test signatures know nothing of it.
rule Sandbox_Shell_Dropper
{
    meta:
        description = "shell script that downloads, marks executable and runs a file"
    strings:
        $shebang = /#![ ]?\/(usr\/)?bin\/(env )?(ba|da)?sh/
        $fetch = /(curl|wget)[^\n]{1,200}(https?|ftp):\/\//
        $chmod = /chmod[ ]+(\+x|[0-7]?[0-7][1357][1357])[ ]/
    condition:
        filesize < 64KB and $shebang at 0 and $fetch and $chmod
}
