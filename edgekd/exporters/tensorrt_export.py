def trtexec_command(*a):
    return ""
