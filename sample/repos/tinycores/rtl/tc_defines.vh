// tinycores shared definitions: data width and ALU operation encodings.
`ifndef TC_DEFINES_VH
`define TC_DEFINES_VH

`define TC_DATA_W 8

`define TC_OP_ADD 3'd0
`define TC_OP_SUB 3'd1
`define TC_OP_AND 3'd2
`define TC_OP_OR  3'd3
`define TC_OP_XOR 3'd4
`define TC_OP_SHL 3'd5
`define TC_OP_SHR 3'd6
`define TC_OP_PASS 3'd7

`endif
