# chipforge Tcl checker: runs a model-written OpenSTA/OpenROAD/SDC script in a locked-down
# safe interpreter and reports every command it reaches that is not allowed.
#
# Run by synthesis/validate.py as `tclsh tcl_checker.tcl FLAVOUR` (sdc, opensta or openroad)
# inside sandbox.run, in a directory holding:
#   candidate.tcl  the script to check
#   allowed.txt    tool commands allowed for this flavour (sdc/opensta/openroad), one a line
#   pure.txt       pure Tcl commands the script may use as they are (set, list, string, ...)
#   signatures.txt documented signatures of the allowed commands, a Tcl dict (optional):
#                  command -> {options {-opt type ...} args {{name type optional} ...}
#                              required {-opt ...} strict 0|1}  (synthesis/signatures.py)
#   design.txt     the objects of the design the script refers to, a Tcl dict (optional):
#                  top NAME modules {NAME {ports {name in|out|inout ...} cells {...}
#                  registers {...} nets {...} pins {...}} ...}, read from it by Yosys
#
# How: `interp create -safe` already hides exec/open/socket/source/load/file/cd/glob/...; on
# top of that every command, in every namespace, that is not in pure.txt is deleted, so
# dynamic dispatch ($c, eval, subst, apply, lsort -command, {*}) can only reach:
#   - pure Tcl commands (pure.txt);
#   - one alias per allowed tool command. A documented command (signatures.txt) has its
#     arguments checked as OpenSTA's parse_key_args reads them: an unknown option, an option
#     without its value, a value of the wrong type (not a number, negative, zero period, not
#     one of an enumeration) or a missing required option/argument is reported; object
#     queries (get_ports/get_cells/get_pins/get_nets/get_clocks, all_*) return the names of
#     the design's objects that match and report a pattern that matches none; object
#     arguments (-from, -clock, port lists, ...) must name objects of the design or clocks
#     created earlier (in the sdc flavour; OpenSTA/OpenROAD scripts may rely on clocks of
#     an SDC file the flow read); a few semantic rules (an input delay that is negative or
#     not less than its clock's period, an input delay on an output port, an exception
#     without -from/-to/-through, ...). Other commands return a plausible value;
#   - coverage versions of the commands that run script arguments (if, while, for, foreach,
#     lmap, switch, try, catch, eval, uplevel, proc, apply, dict for/map/with/update/filter,
#     lsort -command; expr and subst run each [command substitution] first, even one behind
#     && || ?: or after a failing one): they run EVERY branch/body (or command prefix) once,
#     command by command, continuing after errors, so code behind a false condition or after
#     a failing command is still reached; loops run once;
#   - `unknown`, which records the name of anything else (exec, open, socket, ...) as DENY.
# Procedures the script defines are also called once at the end with placeholder arguments
# (their semantic problems are not reported then: the arguments are placeholders).
# `proc` may not replace an existing command (e.g. `proc if ...` to hide a branch), may not
# take the name of any Tcl command (`proc exec` would hide later calls of exec) and may not
# name another namespace; `apply` may not name a namespace. The run is bounded by a command
# count, a time limit and a recursion limit; the sandbox bounds memory and wall time.
#
# Output: one event per line, each a two-element Tcl list (at most MAX_EVENTS of them):
#   DENY <name>       a command that is neither pure Tcl nor an allowed tool command was called
#   REDEFINE <name>   proc/apply tried to replace a command or to leave the global namespace
#   SYNTAX <message>  the Tcl parser rejected (part of) the script
#   BAD <code> <why>  a documented command was called wrongly (code: unknown_option,
#                     missing_value, bad_value, negative_value, nonpositive_value, ...);
#                     at most MAX_BAD of them, never while probing placeholders
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
    set text [string map [list \n {\n} \r {\r}] [string range $text 0 [expr {$kind eq "BAD" ? 239 : 119}]]]
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
        set was $::probing
        set ::probing 1
        if {!$limit_hit && [catch {$s eval [list {*}$prefix a b]} msg] == 1} { note_error $msg }
        set ::probing $was
    }
    return [$s invokehidden lsort {*}$args]
}

# ------------------------------------------------------------- documented commands, checked

set flavour [lindex $argv 0]
proc slurp_optional {name} { expr {[file exists $name] ? [slurp $name] : ""} }
set sigs [slurp_optional signatures.txt]
set design [slurp_optional design.txt]
set MAX_BAD 5
set nbad 0
set probing 0
set clocks [dict create]   ;# clock name -> period ("" when not known)
set clock_sources {}       ;# ports/pins clocks were created on (all_inputs -no_clocks)
# Clocks may come from an SDC file the flow read (OpenSTA/OpenROAD scripts, read_sdc): then
# a clock name that this script did not create is not an error.
set clocks_open [expr {$flavour ne "sdc"}]
set have_design [expr {[dict exists $design top] && [dict exists $design modules [dict get $design top]]}]
set top [expr {$have_design ? [dict get $design top] : ""}]

proc bad {code msg} {
    global probing nbad MAX_BAD
    if {$probing || $nbad >= $MAX_BAD} { return }
    incr nbad
    emit BAD "$code $msg"
}

proc objs {kind} {
    global design top
    return [dict get $design modules $top $kind]
}

proc port_names {} {
    set out {}
    foreach {p dir} [objs ports] {
        if {[string first "\[" $p] < 0} { lappend out $p }
    }
    return $out
}

# A few names of a kind, for a rejection's explanation.
proc some {names} {
    set names [lsearch -all -inline -not $names {*\[*}]
    set text [join [lrange $names 0 7] " "]
    if {[llength $names] > 8} { append text " ..." }
    expr {$text eq "" ? "none" : $text}
}

# OpenSTA patterns: * and ? are wildcards, brackets (also \[ \]) are literal; -regexp and
# -nocase as the get_* commands take them. Names of ``kind`` that match, or with ``hier``
# (get_* -hierarchical) names whose last path component matches.
proc match_names {pattern names {regexp 0} {nocase 0} {hier 0}} {
    set out {}
    set pattern [string range $pattern 0 199]
    set nc [expr {$nocase ? "-nocase" : "-exact"}]
    if {$regexp} {
        set flags [expr {$nocase ? {-nocase} : {}}]
        foreach n $names {
            set leaf [lindex [split $n /] end]
            if {(![catch {regexp {*}$flags -- "^(?:$pattern)\$" $n} r] && $r)
                || ($hier && ![catch {regexp {*}$flags -- "^(?:$pattern)\$" $leaf} r] && $r)} { lappend out $n }
        }
        return $out
    }
    set g [string map [list "\\\[" "\[" "\\\]" "\]"] $pattern]
    set g [string map [list "\\" "\\\\" "\[" "\\\[" "\]" "\\\]"] $g]
    foreach n $names {
        set leaf [lindex [split $n /] end]
        if {$nocase} {
            if {[string match -nocase $g $n] || ($hier && [string match -nocase $g $leaf])} { lappend out $n }
        } elseif {[string match $g $n] || ($hier && [string match $g $leaf])} {
            lappend out $n
        }
    }
    return $out
}

# Pins: those of the design's instances, or any pin of a register (its library cell's pins
# are not known here: the part after the last / is not checked).
proc match_pins {pattern {regexp 0} {nocase 0} {hier 0}} {
    set found [match_names $pattern [objs pins] $regexp $nocase $hier]
    if {![llength $found] && [set k [string last / $pattern]] > 0} {
        if {[llength [match_names [string range $pattern 0 [expr {$k - 1}]] [objs registers] $regexp $nocase $hier]]} {
            return [list $pattern]
        }
    }
    return $found
}

proc match_kind {kind pattern {regexp 0} {nocase 0} {hier 0}} {
    global clocks design
    switch -- $kind {
        port { return [match_names $pattern [dict keys [objs ports]] $regexp $nocase] }
        cell { return [match_names $pattern [concat [objs cells] [objs registers]] $regexp $nocase $hier] }
        net { return [match_names $pattern [objs nets] $regexp $nocase $hier] }
        pin { return [match_pins $pattern $regexp $nocase $hier] }
        clock { return [match_names $pattern [dict keys $clocks] $regexp $nocase] }
        design { return [match_names $pattern [dict keys [dict get $design modules]]] }
    }
    return {}
}

proc kind_names {kind} {
    global clocks
    switch -- $kind {
        port { return [port_names] }
        cell { return [concat [objs cells] [objs registers]] }
        net { return [objs nets] }
        pin { return [objs pins] }
        clock { return [dict keys $clocks] }
    }
    return {}
}

# get_ports/get_cells/get_pins/get_nets/get_clocks: the matching names; a pattern that
# matches nothing is reported (unless -quiet, or a clock that an SDC file may define).
proc query {cmd kind call} {
    global have_design clocks_open top
    set opts [dict get $call opts]
    set patterns [lindex [dict get $call args] 0]
    if {$kind ne "clock" && !$have_design} { return [list ${kind}0 ${kind}1] }
    if {[dict exists $opts -of_objects]} { return [lrange [kind_names $kind] 0 1] }
    if {[catch {llength $patterns} len]} { bad bad_value "$cmd: the patterns are not a Tcl list"; return {} }
    if {$len == 0} { return [kind_names $kind] }
    set regexp [dict exists $opts -regexp]
    set nocase [dict exists $opts -nocase]
    set hier [dict exists $opts -hierarchical]
    set out {}
    foreach p $patterns {
        set found [match_kind $kind $p $regexp $nocase $hier]
        if {![llength $found]} {
            if {$kind eq "clock" && $clocks_open} {
                lappend out $p
            } elseif {![dict exists $opts -quiet]} {
                set where [expr {$kind eq "clock" ? "created so far" : "of $top"}]
                bad no_such_$kind "$cmd $p: no $kind matches (${kind}s $where: [some [kind_names $kind]])"
            }
        }
        lappend out {*}$found
    }
    return [lsort -unique $out]
}

# Whether a name given as an object (not through a query) is one: a port, pin, cell, net,
# clock or module of the design.
proc object_kinds {el kinds} {
    foreach kind $kinds {
        if {[llength [match_kind $kind $el]]} { return 1 }
    }
    return 0
}

proc check_objects {cmd what type value} {
    global have_design clocks_open top clocks
    if {[catch {llength $value}]} { bad bad_value "$cmd $what: '$value' is not a Tcl list"; return }
    foreach el $value {
        if {$el eq ""} { continue }
        switch -- $type {
            clocks {
                if {![object_kinds $el clock] && !$clocks_open} {
                    bad no_such_clock "$cmd $what: no clock $el (clocks created so far: [some [dict keys $clocks]])"
                }
            }
            ports {
                if {$have_design && ![object_kinds $el {port pin}]} {
                    bad no_such_port "$cmd $what: $el is not a port or pin of $top (ports: [some [port_names]])"
                }
            }
            design {
                if {$have_design && ![object_kinds $el design]} {
                    set mods [some [dict keys [dict get $::design modules]]]
                    bad no_such_design "$cmd $what: $el is not a module of the design ($mods)"
                }
            }
            default {
                if {$have_design && ![object_kinds $el {port pin cell net clock design}] && !$clocks_open} {
                    bad no_such_object "$cmd $what: $el is not a port, pin, cell, net or clock of $top"
                }
            }
        }
    }
}

proc is_num {v} { string is double -strict $v }

proc check_value {cmd what type value} {
    if {$value eq ""} { return }  ;# a placeholder (a loop over an empty list): nothing to check
    switch -glob -- $type {
        flag - string { }
        number - nonneg - positive {
            if {![is_num $value]} {
                bad bad_value "$cmd $what: '$value' is not a number"
            } elseif {$type eq "nonneg" && $value < 0} {
                bad negative_value "$cmd $what: $value is negative (it must be >= 0)"
            } elseif {$type eq "positive" && $value <= 0} {
                bad nonpositive_value "$cmd $what: $value must be greater than 0"
            }
        }
        int - nonneg_int - positive_int {
            if {![string is entier -strict $value]} {
                bad bad_value "$cmd $what: '$value' is not an integer"
            } elseif {$type eq "nonneg_int" && $value < 0} {
                bad negative_value "$cmd $what: $value is negative (it must be >= 0)"
            } elseif {$type eq "positive_int" && $value <= 0} {
                bad nonpositive_value "$cmd $what: $value must be greater than 0"
            }
        }
        edges {
            if {[catch {llength $value}]} { bad bad_value "$cmd $what: '$value' is not a list of edges"; return }
            set last -1
            foreach e $value {
                if {![is_num $e]} { bad bad_value "$cmd $what: edge '$e' is not a number"; return }
                if {$e < 0} { bad negative_value "$cmd $what: edge $e is negative"; return }
                if {$e < $last} { bad bad_value "$cmd $what: edges {$value} do not increase"; return }
                set last $e
            }
        }
        enum:* {
            set words [split [string range $type 5 end] |]
            if {$value ni $words} { bad bad_value "$cmd $what: '$value' is not one of [join $words {, }]" }
        }
        default { check_objects $cmd $what $type $value }
    }
}

# Read a call as OpenSTA's parse_key_args does: a word "-x" with a letter after the dash
# is an option, or the prefix of one (its value, if it takes one, is the next word whatever
# it is); everything else is a positional argument (so -2 is a negative number).
# Returns {opts {-opt value ...} args {positional ...}}.
proc parse_call {cmd sig argv} {
    set options [dict get $sig options]
    set strict [dict get $sig strict]
    set opts [dict create]
    set pos {}
    set n [llength $argv]
    for {set i 0} {$i < $n} {incr i} {
        set a [lindex $argv $i]
        if {$a in {> >>}} { incr i; continue }  ;# output redirection of report commands, with its file
        if {[string length $a] >= 2 && [string index $a 0] eq "-" && [string is alpha [string index $a 1]]} {
            if {![dict exists $options $a]} {
                # parse_key_args takes a unique-enough prefix: the first option (one with a
                # value before a flag) that starts with the word (-hier is -hierarchical).
                set full ""
                foreach want {value flag} {
                    dict for {o t} $options {
                        if {$full eq "" && ($t eq "flag") == ($want eq "flag") && [string first $a $o] == 0} {
                            set full $o
                        }
                    }
                }
                if {$full eq ""} {
                    set known [join [lrange [dict keys $options] 0 11] " "]
                    bad unknown_option "$cmd $a: not a documented option of $cmd (options: $known)"
                    continue
                }
                set a $full
            }
            set type [dict get $options $a]
            if {$type eq "flag"} { dict set opts $a 1; continue }
            if {$i + 1 >= $n} { bad missing_value "$cmd $a: the option needs a value"; continue }
            incr i
            dict set opts $a [lindex $argv $i]
            check_value $cmd $a $type [lindex $argv $i]
        } else {
            lappend pos $a
        }
    }
    set specs [dict get $sig args]
    set k 0
    foreach spec $specs {
        lassign $spec pname ptype optional
        if {$k < [llength $pos]} {
            check_value $cmd $pname $ptype [lindex $pos $k]
        } elseif {$strict && !$optional} {
            bad missing_argument "$cmd: the $pname argument is missing"
        }
        incr k
    }
    if {$strict} {
        if {[llength $pos] > [llength $specs]} {
            bad extra_argument "$cmd: unexpected argument '[lindex $pos [llength $specs]]'"
        }
        foreach r [dict get $sig required] {
            if {![dict exists $opts $r]} { bad missing_option "$cmd: $r is required" }
        }
    }
    return [dict create opts $opts args $pos]
}

proc opt {call name {default ""}} {
    set opts [dict get $call opts]
    expr {[dict exists $opts $name] ? [dict get $opts $name] : $default}
}

proc arg {call k} { lindex [dict get $call args] $k }

proc clock_period {name} {
    global clocks
    expr {[dict exists $clocks $name] ? [dict get $clocks $name] : ""}
}

# What the documented commands mean beyond their signatures.
proc semantics {name call} {
    global clocks clock_sources clocks_open have_design top design
    switch -- $name {
        create_clock {
            set pins [arg $call 0]
            set clk [opt $call -name [lindex $pins 0]]
            if {$clk eq ""} {
                bad missing_argument "create_clock: give -name or the ports/pins of the clock"
                return ""
            }
            set period [opt $call -period]
            set wave [opt $call -waveform]
            if {[is_num $period] && $period > 0 && ![catch {llength $wave} nw] && $nw > 0} {
                if {$nw % 2} { bad bad_value "create_clock -waveform: {$wave} needs an even number of edges" }
                set first [lindex $wave 0]
                if {[is_num $first] && $first >= $period} {
                    bad bad_value "create_clock -waveform: the first edge $first is not within the period $period"
                }
            }
            dict set clocks $clk [expr {[is_num $period] ? $period : ""}]
            lappend clock_sources {*}$pins
            return $clk
        }
        create_generated_clock {
            set pins [arg $call 0]
            set clk [opt $call -name [lindex $pins 0]]
            set opts [dict get $call opts]
            if {![dict exists $opts -divide_by] && ![dict exists $opts -multiply_by] && ![dict exists $opts -edges]} {
                bad missing_option "create_generated_clock: one of -divide_by, -multiply_by or -edges is required"
            }
            if {$clk ne ""} { dict set clocks $clk "" }
            lappend clock_sources {*}$pins
            return $clk
        }
        set_input_delay - set_output_delay {
            set delay [arg $call 0]
            set clk [opt $call -clock]
            set opts [dict get $call opts]
            if {[is_num $delay] && $delay < 0 && ![dict exists $opts -min]} {
                bad negative_value "$name $delay: a negative external delay is only meaningful as a -min (hold) delay"
            }
            set period [clock_period $clk]
            if {[is_num $delay] && [is_num $period] && $period > 0 && $delay >= $period && ![dict exists $opts -min]} {
                bad delay_exceeds_period \
                    "$name $delay: not less than the period $period of clock $clk, no time is left for the logic"
            }
            if {$have_design && ![catch {llength [arg $call 1]}]} {
                set want [expr {$name eq "set_input_delay" ? "out" : "in"}]
                set ports [objs ports]
                foreach el [arg $call 1] {
                    if {[dict exists $ports $el] && [dict get $ports $el] eq $want} {
                        set dir [expr {$want eq "out" ? "an output" : "an input"}]
                        bad wrong_direction "$name: $el is $dir port of $top"
                        break
                    }
                }
            }
        }
        set_clock_uncertainty {
            set u [arg $call 0]
            if {[is_num $u] && ![catch {llength [arg $call 1]}]} {
                foreach clk [arg $call 1] {
                    set period [clock_period $clk]
                    if {[is_num $period] && $period > 0 && $u >= $period} {
                        bad delay_exceeds_period \
                            "set_clock_uncertainty $u: not less than the period $period of clock $clk"
                        break
                    }
                }
            }
        }
        set_false_path - set_multicycle_path - set_max_delay - set_min_delay {
            set opts [dict get $call opts]
            set has 0
            foreach o {-from -rise_from -fall_from -to -rise_to -fall_to -through -rise_through -fall_through} {
                if {[dict exists $opts $o]} { set has 1 }
            }
            if {!$has} { bad missing_option "$name: -from, -to or -through is required" }
            if {$name eq "set_multicycle_path"} {
                set m [arg $call 0]
                if {[string is entier -strict $m] && $m < 1 && ![dict exists $opts -hold]} {
                    bad nonpositive_value "set_multicycle_path $m: a setup multiplier must be at least 1"
                }
            }
        }
        read_sdc - source { set clocks_open 1 }
        link_design - current_design {
            set d [arg $call 0]
            if {$d ne "" && $have_design && [dict exists $design modules $d]} { set top $d }
            return $top
        }
        get_ports { return [query $name port $call] }
        get_cells { return [query $name cell $call] }
        get_pins { return [query $name pin $call] }
        get_nets { return [query $name net $call] }
        get_clocks { return [query $name clock $call] }
        all_clocks { return [dict keys $clocks] }
        all_inputs - all_outputs {
            if {!$have_design} { return {port0 port1} }
            set out {}
            foreach p [port_names] {
                set dir [dict get [objs ports] $p]
                if {$dir eq "inout" || $dir eq [expr {$name eq "all_inputs" ? "in" : "out"}]} {
                    if {[dict exists [dict get $call opts] -no_clocks] && $p in $clock_sources} { continue }
                    lappend out $p
                }
            }
            return $out
        }
        all_registers {
            if {!$have_design} { return {reg0 reg1} }
            return [lsearch -all -inline [objs registers] *_reg*]
        }
    }
    return ""
}

proc tool_call {name args} {
    global ncalls sigs top
    incr ncalls
    if {[dict exists $sigs $name]} {
        set call [parse_call $name [dict get $sigs $name] $args]
        set result [semantics $name $call]
        if {$result ne "" || [string match get_* $name] || [string match all_* $name]} { return $result }
    }
    switch -glob -- $name {
        get_property - get_attribute { return 1.0 }
        get_name - get_full_name { return obj0 }
        current_design { return $top }
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
set probing 1
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
