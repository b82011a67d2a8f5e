# chipforge Tcl checker: runs a model-written OpenSTA/OpenROAD/SDC script in a locked-down
# safe interpreter and reports every command it reaches that is not allowed.
#
# Run by synthesis/validate.py as `tclsh tcl_checker.tcl` inside sandbox.run, in a directory
# holding:
#   candidate.tcl  the script to check
#   allowed.txt    tool commands allowed for this flavour (sdc/opensta/openroad), one a line
#   pure.txt       pure Tcl commands the script may use as they are (set, list, string, ...)
#
# How: `interp create -safe` already hides exec/open/socket/source/load/file/cd/glob/...; on
# top of that every command, in every namespace, that is not in pure.txt is deleted, so
# dynamic dispatch ($c, eval, subst, apply, lsort -command, {*}) can only reach:
#   - pure Tcl commands (pure.txt);
#   - one recording alias per allowed tool command (returns a plausible value: a list of
#     two objects for get_*/all_*/find_*, 1.0 for get_property, "" otherwise);
#   - coverage versions of the commands that run script arguments (if, while, for, foreach,
#     lmap, switch, try, catch, eval, uplevel, proc, apply, dict for/map/with/update/filter,
#     lsort -command; expr and subst run each [command substitution] first, even one behind
#     && || ?: or after a failing one): they run EVERY branch/body (or command prefix) once,
#     command by command, continuing after errors, so code behind a false condition or after
#     a failing command is still reached; loops run once;
#   - `unknown`, which records the name of anything else (exec, open, socket, ...) as DENY.
# Procedures the script defines are also called once at the end with placeholder arguments.
# `proc` may not replace an existing command (e.g. `proc if ...` to hide a branch), may not
# take the name of any Tcl command (`proc exec` would hide later calls of exec) and may not
# name another namespace; `apply` may not name a namespace. The run is bounded by a command
# count, a time limit and a recursion limit; the sandbox bounds memory and wall time.
#
# Output: one event per line, each a two-element Tcl list (at most MAX_EVENTS of them):
#   DENY <name>       a command that is neither pure Tcl nor an allowed tool command was called
#   REDEFINE <name>   proc/apply tried to replace a command or to leave the global namespace
#   SYNTAX <message>  the Tcl parser rejected (part of) the script
#   LIMIT <message>   the command-count, time or recursion limit was reached
#   DONE <n>          the check ran to the end; n = tool commands called (always printed)
# Exit status 3 (and INCOMPLETE) when the script is not a complete Tcl script.

set MAX_EVENTS 40
set MAX_COMMANDS 200000
set TIME_LIMIT_S 5
set RECURSION_LIMIT 100

set nevents 0
set ncalls 0
set limit_hit 0
set candidate_procs [dict create]

proc emit {kind {text ""}} {
    global nevents MAX_EVENTS
    if {[incr nevents] > $MAX_EVENTS && $kind ne "DONE"} { return }
    set text [string map [list \n {\n} \r {\r}] [string range $text 0 119]]
    puts [list $kind $text]
}

proc slurp {name} {
    set f [open $name r]
    fconfigure $f -encoding utf-8 -translation auto
    set text [read $f]
    close $f
    return $text
}

proc words_of {name} {
    set out {}
    foreach line [split [slurp $name] \n] {
        set line [string trim $line]
        if {$line ne "" && [string index $line 0] ne "#"} { lappend out $line }
    }
    return $out
}

set text [slurp candidate.tcl]
set allowed [words_of allowed.txt]
set pure [words_of pure.txt]
set covered {if while for foreach lmap switch try catch eval uplevel proc apply dict lsort expr subst}

# ------------------------------------------------------------------ the safe interpreter

set s [interp create -safe]

proc all_commands {s ns} {
    set out [$s eval [list info commands ${ns}::*]]
    foreach child [$s eval [list namespace children $ns]] {
        lappend out {*}[all_commands $s $child]
    }
    return $out
}

# Namespaced helpers of the pure ensembles stay (string map is ::tcl::string::map); every
# other namespaced command goes (::tcl::chan::pipe, ::tcl::namespace::unknown, ::oo::*, ...).
set keep_ns {::tcl::string:: ::tcl::dict:: ::tcl::info:: ::tcl::array:: ::tcl::mathfunc:: ::tcl::mathop::}
set native_global [$s eval {info commands}]
# Names a procedure may not take: every Tcl command, exposed or hidden, here or in the slave.
set reserved [lsort -unique [concat $native_global [interp hidden $s] [info commands]]]
foreach cmd [all_commands $s ""] {
    set tail [string trimleft $cmd :]
    if {[string first :: $tail] < 0} {
        if {$tail in $pure || $tail in $covered || $tail eq "rename"} { continue }
    } else {
        set kept 0
        foreach prefix $keep_ns {
            if {[string first $prefix $cmd] == 0} { set kept 1; break }
        }
        if {$kept} { continue }
    }
    catch {$s eval [list ::rename $cmd {}]}
}
foreach cmd $covered {
    if {$cmd in $native_global} { interp hide $s $cmd }
}
$s eval {::rename ::rename {}}
interp recursionlimit $s $RECURSION_LIMIT
interp limit $s commands -value $MAX_COMMANDS
interp limit $s time -seconds [expr {[clock seconds] + $TIME_LIMIT_S}] -granularity 1

# ------------------------------------------------------------- running scripts, covering

# Split a script into its top-level commands with Tcl's own completeness test: a command
# ends at an unescaped newline or semicolon where the text so far is complete. Comments run
# to the end of their line.
proc split_commands {script} {
    set out {}
    set n [string length $script]
    set i 0
    while {$i < $n} {
        if {[regexp -start $i -indices {\A(?:[ \t\r\n;]|\\\n)+} $script m]} {
            set i [expr {[lindex $m 1] + 1}]
            continue
        }
        if {[string index $script $i] eq "#"} {
            set j $i
            set i $n
            while {[set k [string first \n $script $j]] >= 0} {
                if {![escaped $script $k $j]} { set i [expr {$k + 1}]; break }
                set j [expr {$k + 1}]
            }
            continue
        }
        set start $i
        set j $i
        set i $n
        set cmd [string range $script $start end]
        while {[regexp -start $j -indices {[;\n]} $script m]} {
            set k [lindex $m 0]
            set j [expr {$k + 1}]
            if {[escaped $script $k $start]} { continue }
            set cand [string range $script $start [expr {$k - 1}]]
            if {[info complete $cand]} { set cmd $cand; set i $j; break }
        }
        lappend out $cmd
    }
    return $out
}

# Whether the character at index k is escaped (an odd run of backslashes before it).
proc escaped {script k start} {
    set b 0
    for {set m [expr {$k - 1}]} {$m >= $start && [string index $script $m] eq "\\"} {incr m -1} { incr b }
    return [expr {$b % 2}]
}

# Evaluate one command in the candidate interpreter at its current frame; errors are noted
# (syntax errors and limits are events) and never stop the check.
proc slave_eval {args} {
    global s limit_hit
    if {$limit_hit} { return }
    set code [catch {$s eval {*}$args} msg]
    if {$code == 1} { note_error $msg }
}

proc note_error {msg} {
    global limit_hit
    if {[string match "*limit exceeded*" $msg] || [string match "too many nested evaluations*" $msg]} {
        if {!$limit_hit} { emit LIMIT $msg }
        set limit_hit 1
    } elseif {[regexp {^(missing close-brace|missing close-bracket|missing "|extra characters after close-(brace|quote))} $msg]} {
        emit SYNTAX $msg
    }
}

proc run_script {script} {
    global limit_hit
    foreach cmd [split_commands $script] {
        if {$limit_hit} { return }
        slave_eval $cmd
    }
}

proc check_expr {e} { slave_eval [list expr $e] }

# Run every [command substitution] of an expression once (operands behind && || ?: too),
# then evaluate it natively.
proc cover_expr {args} {
    global s
    run_substitutions [join $args " "]
    return [$s invokehidden expr {*}$args]
}

proc run_substitutions {text} {
    global limit_hit
    set i 0
    while {!$limit_hit && [set i [string first "\[" $text $i]] >= 0} {
        if {[escaped $text $i 0]} { incr i; continue }
        set j $i
        set end -1
        while {[set j [string first "\]" $text [expr {$j + 1}]]] >= 0} {
            if {![escaped $text $j $i] && [info complete [string range $text $i $j]]} { set end $j; break }
        }
        if {$end < 0} { return }
        run_script [string range $text [expr {$i + 1}] [expr {$end - 1}]]
        set i [expr {$end + 1}]
    }
}

proc cover_if {args} {
    set n [llength $args]
    set i 0
    while {$i < $n} {
        check_expr [lindex $args $i]
        incr i
        if {[lindex $args $i] eq "then"} { incr i }
        if {$i < $n} { run_script [lindex $args $i]; incr i }
        if {$i >= $n} { break }
        set w [lindex $args $i]
        if {$w eq "elseif"} { incr i; continue }
        if {$w eq "else"} { incr i }
        if {$i < $n} { run_script [lindex $args $i] }
        break
    }
    return ""
}

proc cover_while {args} {
    if {[llength $args] != 2} { error "wrong # args: should be \"while test command\"" }
    check_expr [lindex $args 0]
    run_script [lindex $args 1]
    return ""
}

proc cover_for {args} {
    if {[llength $args] != 4} { error "wrong # args: should be \"for start test next command\"" }
    lassign $args init cond next body
    run_script $init
    check_expr $cond
    run_script $body
    run_script $next
    return ""
}

# foreach/lmap: set each loop variable to the first value of its list ("" when empty), run once.
proc cover_foreach {args} {
    global s
    if {[llength $args] < 3 || [llength $args] % 2 == 0} { error "wrong # args: should be \"foreach varList list ?varList list ...? command\"" }
    foreach {vars values} [lrange $args 0 end-1] {
        if {[catch {llength $vars}] || [catch {llength $values}]} { continue }
        set k 0
        foreach v $vars {
            slave_eval [list set $v [lindex $values $k]]
            incr k
        }
    }
    run_script [lindex $args end]
    return ""
}

proc cover_lmap {args} { cover_foreach {*}$args }

proc cover_switch {args} {
    set n [llength $args]
    set i 0
    while {$i < $n && [string index [lindex $args $i] 0] eq "-"} {
        set opt [lindex $args $i]
        incr i
        if {$opt eq "--"} { break }
        if {$opt in {-matchvar -indexvar}} { incr i }
    }
    incr i  ;# the string being switched on
    set rest [lrange $args $i end]
    if {[llength $rest] == 1} {
        if {[catch {set rest [lindex $rest 0]; llength $rest}]} { emit SYNTAX "switch body is not a list"; return "" }
    }
    foreach {pattern body} $rest {
        if {$body ne "-"} { run_script $body }
    }
    return ""
}

proc cover_try {args} {
    global s
    run_script [lindex $args 0]
    set n [llength $args]
    set i 1
    while {$i < $n} {
        set w [lindex $args $i]
        if {$w in {on trap} && $i + 3 < $n} {
            foreach v [lindex $args [expr {$i + 2}]] { slave_eval [list set $v ""] }
            run_script [lindex $args [expr {$i + 3}]]
            incr i 4
        } elseif {$w eq "finally" && $i + 1 < $n} {
            run_script [lindex $args [expr {$i + 1}]]
            incr i 2
        } else {
            incr i
        }
    }
    return ""
}

proc cover_catch {args} {
    if {[llength $args] < 1 || [llength $args] > 3} { error "wrong # args: should be \"catch script ?resultVarName? ?optionVarName?\"" }
    run_script [lindex $args 0]
    foreach v [lrange $args 1 end] { slave_eval [list set $v ""] }
    return 0
}

proc cover_eval {args} {
    run_script [concat {*}$args]
    return ""
}

proc cover_uplevel {args} {
    global s limit_hit
    set level 1
    if {[llength $args] > 1 && [regexp {^#?[0-9]+$} [lindex $args 0]]} {
        set level [lindex $args 0]
        set args [lrange $args 1 end]
    }
    foreach cmd [split_commands [concat {*}$args]] {
        if {$limit_hit} { return "" }
        if {[catch {$s invokehidden uplevel $level $cmd} msg] == 1} { note_error $msg }
    }
    return ""
}

proc cover_proc {args} {
    global s candidate_procs existing reserved
    if {[llength $args] != 3} { error "wrong # args: should be \"proc name args body\"" }
    lassign $args name params body
    set bare [regsub {^::} $name ""]
    if {[string first :: $bare] >= 0 || $bare eq ""} {
        emit REDEFINE $name
        return ""
    }
    if {($bare in $existing || $bare in $reserved) && ![dict exists $candidate_procs $bare]} {
        emit REDEFINE $bare
        return ""
    }
    $s invokehidden proc ::$bare $params $body
    dict set candidate_procs $bare [list $params $body]
    return ""
}

# apply: the lambda body runs command by command (as a procedure body, in its own frame).
set napply 0
proc cover_apply {args} {
    global s napply
    if {[llength $args] < 1} { error "wrong # args: should be \"apply lambdaExpr ?arg ...?\"" }
    set lambda [lindex $args 0]
    if {[catch {llength $lambda} len] || $len > 2} {
        emit REDEFINE "apply with a namespace"
        return ""
    }
    if {[incr napply] > 1000} { return [$s invokehidden apply {*}$args] }
    lassign $lambda params body
    interp alias $s ::cf_apply_body_$napply {} run_script $body
    $s invokehidden proc ::cf_apply_$napply $params [list ::cf_apply_body_$napply]
    slave_eval [list ::cf_apply_$napply {*}[lrange $args 1 end]]
    return ""
}

proc cover_subst {args} {
    global s
    if {"-nocommands" ni [lrange $args 0 end-1]} { run_substitutions [lindex $args end] }
    return [$s invokehidden subst {*}$args]
}

# dict for/map/filter/update/with run their script once (with the loop variables set to "");
# every other subcommand is the native one.
proc cover_dict {args} {
    global s
    set sub [lindex $args 0]
    if {$sub in {for map} && [llength $args] == 4} {
        foreach v [lindex $args 1] { slave_eval [list set $v ""] }
        run_script [lindex $args 3]
        return ""
    }
    if {$sub in {update with} && [llength $args] >= 3} {
        run_script [lindex $args end]
        return ""
    }
    if {$sub eq "filter" && [lindex $args 2] eq "script" && [llength $args] == 5} {
        foreach v [lindex $args 3] { slave_eval [list set $v ""] }
        run_script [lindex $args 4]
        return ""
    }
    return [$s invokehidden dict {*}$args]
}

# lsort -command: the command prefix is called once (with two placeholder elements) even when
# the list has fewer than two elements; then the native lsort runs.
proc cover_lsort {args} {
    global s limit_hit
    set k [lsearch -exact [lrange $args 0 end-1] -command]
    if {$k >= 0 && $k + 1 < [llength $args] - 1} {
        set prefix [lindex $args [expr {$k + 1}]]
        if {!$limit_hit && [catch {$s eval [list {*}$prefix a b]} msg] == 1} { note_error $msg }
    }
    return [$s invokehidden lsort {*}$args]
}

# ------------------------------------------------------------------ recording aliases

proc tool_call {name args} {
    global ncalls
    incr ncalls
    switch -glob -- $name {
        get_property - get_attribute { return 1.0 }
        get_name - get_full_name { return obj0 }
        current_design { return top }
        get_* - all_* - find_* { return {obj0 obj1} }
        default { return "" }
    }
}

proc deny {name args} {
    emit DENY $name
    return ""
}

proc fake_puts {args} { return "" }

proc fake_clock {args} {
    switch -- [lindex $args 0] {
        format { return "Thu Jan 01 00:00:00 UTC 1970" }
        default { return 0 }
    }
}

foreach cmd $covered {
    if {[info procs cover_$cmd] eq ""} { error "checker bug: no cover_$cmd" }
    interp alias $s $cmd {} cover_$cmd
}
foreach cmd $allowed {
    if {$cmd ni $pure && $cmd ni $covered} { interp alias $s ::$cmd {} tool_call $cmd }
}
interp alias $s ::puts {} fake_puts
interp alias $s ::clock {} fake_clock
interp alias $s ::unknown {} deny
set existing [concat $pure $covered $allowed [list puts clock unknown]]

# ---------------------------------------------------------------------------- the run

if {![info complete $text]} {
    puts [list INCOMPLETE ""]
    exit 3
}
run_script $text
# Probe every procedure definition once, including ones defined or redefined by probes.
set probed [dict create]
set i 0
while {!$limit_hit && $i < 500} {
    set todo {}
    dict for {name def} $candidate_procs {
        if {![dict exists $probed $def]} { lappend todo $def }
    }
    if {![llength $todo]} { break }
    foreach def $todo {
        dict set probed $def 1
        lassign $def params body
        set placeholders {}
        if {[catch {
            foreach p $params {
                if {[lindex $p 0] ne "args"} { lappend placeholders 1 }
            }
            interp alias $s ::cf_probe_body_$i {} run_script $body
            $s invokehidden proc ::cf_probe_$i $params [list ::cf_probe_body_$i]
        }]} { incr i; continue }
        slave_eval [list ::cf_probe_$i {*}$placeholders]
        incr i
    }
}
emit DONE $ncalls
exit 0
