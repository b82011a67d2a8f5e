`include "tc_defines.vh"

// tc_alu: combinational arithmetic/logic unit.
// Computes y = a <op> b for the eight operations encoded in tc_defines.vh:
// add, subtract, and, or, xor, shift left by one, shift right by one and
// pass-through of a. carry is the carry out of an add, or the inverted
// borrow of a subtract, and is 0 for the other operations. zero is high
// when the result is all zeros.
module tc_alu #(
    parameter W = `TC_DATA_W
) (
    input      [2:0]   op,
    input      [W-1:0] a,
    input      [W-1:0] b,
    output reg [W-1:0] y,
    output reg         carry,
    output             zero
);
    always @(*) begin
        carry = 1'b0;
        case (op)
            `TC_OP_ADD:  {carry, y} = {1'b0, a} + {1'b0, b};
            `TC_OP_SUB:  {carry, y} = {1'b0, a} + {1'b0, ~b} + 1'b1;
            `TC_OP_AND:  y = a & b;
            `TC_OP_OR:   y = a | b;
            `TC_OP_XOR:  y = a ^ b;
            `TC_OP_SHL:  y = {a[W-2:0], 1'b0};
            `TC_OP_SHR:  y = {1'b0, a[W-1:1]};
            default:     y = a;
        endcase
    end

    assign zero = (y == {W{1'b0}});
endmodule
